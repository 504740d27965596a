"""Learning at the edge: federated LoRA fine-tuning on Flower, closed into the fleet.

    lora      LoRA factors over our torch Llama forward (FFA-LoRA: A frozen and shared, B trained)
    data      a device's opted-in text, tokenized by its base model, split into train / held-out
    privacy   DP configuration and the epsilon of a run (opacus' RDP accountant)
    robust    robust aggregation rules (median, trimmed mean, clipped mean) and poisoning attacks
    config    ``LearnConfig``: every option of a run, and its round trip through Flower's run config
    apps      the Flower ServerApp and ClientApp (SecAgg+, DP wrappers, strategies)
    deploy    ``Federation``: flower-superlink + one flower-supernode per device on loopback
    loop      ``learn_start``: federate -> judge -> GGUF adapter -> sign, publish -> staged rollout

Needs the ``learn`` extra (flwr, opacus, torch). Device text never leaves the ClientApp: the server
side sees LoRA factors (under SecAgg+, only their masked sum) and per-device perplexities.
"""
