"""Fleet update figures: publish a model, let one agent install it, and report how long each step
took on the device (download, install, health, switch, from the agent's own report), the transfer
size with zstd, and the end-to-end latency from publish to switched. Prints JSON.

    .venv/bin/python bench/fleet_update.py [--model PATH.gguf] [--versions 3]

Without --model it uses stories260K converted to F32 (tiny; figures are dominated by overheads);
pass the SmolLM2 Q4_1 GGUF for a realistic 100 MB artifact.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests" / "fleet"), str(REPO / "tests" / "agent")]


def variant(src: Path, dst: Path, i: int) -> Path:
    """Same weights, different bytes: the first byte of the general.name string changes."""
    data = bytearray(src.read_bytes())
    key = b"general.name"
    at = data.find(key)
    if at < 0:
        raise SystemExit(f"{src} has no general.name")
    # value layout after the key: u32 type, u64 length, bytes
    start = at + len(key) + 4 + 8
    data[start] = ord("A") + i % 26
    dst.write_bytes(bytes(data))
    return dst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path)
    ap.add_argument("--versions", type=int, default=3)
    args = ap.parse_args()

    from agent_kit import make_agent
    from fleet_kit import Fleet

    with tempfile.TemporaryDirectory(prefix="edgegen-bench-") as tmp:
        root = Path(tmp)
        model = args.model
        if model is None:
            from edgegen.formats.convert import convert_model

            model = convert_model(REPO / "tests" / "fixtures" / "stories260K", root / "stories.gguf", dtype="f32")
        rows = []
        with Fleet(root / "fleet") as fleet:
            agent = make_agent(fleet.url, root / "device")
            for v in range(1, args.versions + 1):
                art = variant(model, root / f"v{v}.gguf", v)
                t0 = time.perf_counter()
                rel = fleet.publish(art, v)
                publish_s = time.perf_counter() - t0
                if v == 1:
                    agent.enroll(fleet.token())
                t1 = time.perf_counter()
                outcome = agent.run_once()
                device_s = time.perf_counter() - t1
                event = next(e for e in fleet.events() if e["kind"] == "switched" and e["version"] == v)
                rows.append({
                    "version": v, "outcome": outcome, "artifact_bytes": rel.manifest.size,
                    "zstd_bytes": rel.manifest.transfers["zstd"].size,
                    "publish_s": round(publish_s, 3), "device_update_s": round(device_s, 3),
                    "steps_s": event["detail"].get("timings_s"), "health": event["detail"].get("health"),
                })
            agent.close()
    print(json.dumps({"model": str(args.model or "stories260K-f32"), "updates": rows}, indent=1))


if __name__ == "__main__":
    main()
