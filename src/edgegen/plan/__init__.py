"""Device planning: will a model fit this device, how fast, at what energy per token.

    profile    DeviceProfile / EngineCosts / load_profile: what a device offers and each engine costs there
    facts      model_facts(path): weights read per token by storage type, bytes, K/V shape of an artifact
    predict    predict / plan / choose: RAM, TTFT, decode tok/s, J/token per variant; the pick or a refusal
    measure    measure_profile: `edgegen profile` on this device
    energy     RAPL / battery counters, and the labelled estimate when there are none

The shipped hand-written profiles (``plan/profiles/*.json``) cite their sources in their ``source`` field.
"""

from edgegen.plan.facts import ModelFacts, model_facts
from edgegen.plan.predict import Constraints, Prediction, Workload, choose, plan, predict
from edgegen.plan.profile import DeviceProfile, EngineCosts, Power, builtin_profiles, load_profile

__all__ = ["Constraints", "DeviceProfile", "EngineCosts", "ModelFacts", "Power", "Prediction", "Workload",
           "builtin_profiles", "choose", "load_profile", "model_facts", "plan", "predict"]
