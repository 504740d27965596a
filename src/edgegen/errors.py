"""One error hierarchy for the whole package.

    EdgegenError                     base; carries the CLI exit code
    ├── UserInputError               bad input from the user (exit 2): one clear line, no traceback
    │   ├── ModelNotFoundError       a model path/source that does not exist
    │   ├── InvalidModelError        a file or folder that is not a usable model (truncated GGUF, no config.json)
    │   │   └── ChatTemplateError    the model's chat template does not compile (completions still work)
    │   ├── UnsupportedArchitectureError
    │   ├── OutputError              an output path that cannot be written
    │   ├── InvalidTextError         a text file (calibration/eval) that is missing or too short
    │   ├── BudgetError              a size budget no quantization can meet, a time budget of 0
    │   ├── PruneTargetError         a prune target that keeps nothing, or more than the model has
    │   ├── TokenizerMismatchError   a distillation teacher whose tokenizer differs from the student's
    │   ├── EngineNotInstalledError  an engine back end whose package is not installed (onnxruntime-genai)
    │   ├── InvalidProfileError      a device profile file that is unreadable or misses fields
    │   ├── PlanRefusedError         no model/engine/format variant fits the device under the constraints
    │   ├── InvalidRequestError      an API request the server cannot honour (HTTP 400)
    │   ├── TlsSetupError            missing or unreadable TLS material (fleet CA, certificates)
    │   ├── InvalidRolloutError      a rollout request that cannot be planned (bad stages, not newer)
    │   ├── RolloutStateError        an action the rollout's state does not allow (resume a completed one)
    │   ├── NotEnrolledError         a device data dir with no credential and no enrolment token
    │   ├── UnknownDeviceError       a device id the control plane does not know
    │   ├── KeyFileError             a key file that is missing, unreadable or not Ed25519
    │   ├── KeyringError             the publisher's key directory is missing or incomplete
    │   ├── PublishError             a publication the registry refuses
    │   ├── DatabaseURLError         a database URL that is neither SQLite nor PostgreSQL
    │   └── LearnConfigError         federated-learning options that do not go together (robust + SecAgg+)
    ├── SourceError                  a model source could not be fetched (offline hub, pip failure)
    ├── IntegrityError               a download whose hash/size does not match what was expected
    ├── ConversionError              conversion failed for a reason other than bad input
    ├── EngineError                  an engine (llama.cpp or ONNX Runtime) failed (load, decode)
    │   └── ContextOverflowError     a prompt longer than the context window
    ├── QuantizationError            a quantizer failed
    ├── ServeError                   the edge server (queue full, upstream failure)
    │   ├── QueueFullError
    │   ├── UpstreamError
    │   └── EngineNotReadyError      the model is still loading, or failed to load
    ├── FederationError              a federated run failed (SuperLink/SuperNode did not start, run failed)
    └── FleetError                   control plane and device agent
        ├── AuthError                missing, wrong or revoked credential
        ├── HealthCheckError         a candidate model that does not load, generate, or is too slow
        ├── TelemetryError           the telemetry spool or its upload failed (disk full, corrupt spool)
        └── TrustError               an update refused (signature, hash, rollback, freeze, size)
            ├── SignatureError
            ├── HashMismatchError
            ├── RollbackError
            ├── FreezeError
            ├── OversizeError
            ├── BindingError         metadata that does not belong together (mix and match)
            ├── MetadataFormatError  metadata that does not parse or lacks a required field
            ├── SealedDataError      a sealed file that does not open (wrong key, altered chunks)
            ├── UnsafeArchiveError   a packed model folder with links, unsafe paths or oversize contents
            └── UnsupportedArtifactError  an artifact this device cannot store or run (an ONNX folder
                                     where models are sealed at rest)

Library code raises these; only the CLI turns them into messages and exit codes. Foreign exceptions
are translated at the boundary (``raise EngineError(...) from exc``). Every class is defined in this
module; a few are re-exported by the modules that raise them, where they used to live.
"""

from __future__ import annotations


class EdgegenError(Exception):
    """Base of every error edgegen raises on purpose."""

    exit_code: int = 1


class UserInputError(EdgegenError):
    exit_code = 2


class ModelNotFoundError(UserInputError):
    pass


class InvalidModelError(UserInputError):
    pass


class ChatTemplateError(InvalidModelError):
    pass


class UnsupportedArchitectureError(UserInputError):
    pass


class OutputError(UserInputError):
    pass


class InvalidTextError(UserInputError):
    pass


class BudgetError(UserInputError):
    pass


class PruneTargetError(UserInputError):
    pass


class TokenizerMismatchError(UserInputError):
    pass


class InvalidRequestError(UserInputError):
    pass


class EngineNotInstalledError(UserInputError):
    pass


class InvalidProfileError(UserInputError):
    pass


class PlanRefusedError(UserInputError):
    pass


class TlsSetupError(UserInputError):
    """An https control plane without a pinned fleet CA, no fleet CA to serve with, a bad CSR."""


class SourceError(EdgegenError):
    pass


class IntegrityError(EdgegenError):
    pass


class ConversionError(EdgegenError):
    pass


class EngineError(EdgegenError):
    pass


class ContextOverflowError(EngineError):
    exit_code = 2


class QuantizationError(EdgegenError):
    pass


class ServeError(EdgegenError):
    pass


class QueueFullError(ServeError):
    pass


class UpstreamError(ServeError):
    pass


class EngineNotReadyError(ServeError):
    pass


class FleetError(EdgegenError):
    pass


class AuthError(FleetError):
    pass


class TrustError(FleetError):
    pass


class SignatureError(TrustError):
    pass


class HashMismatchError(TrustError):
    pass


class RollbackError(TrustError):
    pass


class FreezeError(TrustError):
    pass


class OversizeError(TrustError):
    pass


# Fleet II (rollouts, telemetry, drift): appended by the Fleet II capability.
class InvalidRolloutError(UserInputError):
    """A rollout request that cannot be honoured (bad stages or gate, unknown group or version)."""


class RolloutStateError(UserInputError):
    """An operator action not allowed in the rollout's state (e.g. resuming a completed rollout)."""


class TelemetryError(FleetError):
    """The telemetry spool or its upload failed (disk full, corrupt spool, transport failure)."""


class BindingError(TrustError):
    pass


# Defined here, raised by the fleet, the agent and encryption at rest (re-exported where they were).
class NotEnrolledError(UserInputError):
    """The data directory holds no device credential and no enrolment token was given."""


class HealthCheckError(FleetError):
    """A candidate model that does not load, does not generate, or is too slow."""


class SealedDataError(TrustError):
    """A sealed file that does not open: wrong key, or altered, truncated or reordered chunks."""


class UnknownDeviceError(UserInputError):
    pass


class MetadataFormatError(TrustError):
    """Metadata that does not parse or lacks a required field."""


class KeyFileError(UserInputError):
    """A key file that is missing, unreadable or not an Ed25519 private key."""


class PublishError(UserInputError):
    """A publication the registry refuses (unsigned, stale version, missing blob, expired...)."""


class DatabaseURLError(UserInputError):
    """A database URL that is neither SQLite nor PostgreSQL, or malformed."""


class KeyringError(UserInputError):
    pass


class UnsafeArchiveError(TrustError):
    pass


class UnsupportedArtifactError(TrustError):
    pass


class LearnConfigError(UserInputError):
    pass


class FederationError(EdgegenError):
    pass
