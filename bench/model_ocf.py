"""Timing worker for the openclimatefix ``metnet`` package (PyPI), driven by ``bench/model.py``.

Runs in its own venv (``.venv-ocf``) because that package is also imported as
``metnet``. Started with a JSON request in argv[1] (keys: ``threads``, ``batches``,
``model`` = keyword arguments of ``metnet.MetNet``, ``raw_channels`` and ``raw_size`` =
its input before its own preprocessor, ``frames``, ``tile_leads``), it builds the model,
prints one JSON line (torch version, parameter count, FLOPs per operation counted on the
meta device or ``null`` where the package does not run there), then answers one JSON
line per command read from stdin:

- ``{"op": "forward" | "forward_backward", "batch": B}``: one timed call, one lead time;
- ``{"op": "tile"}``: all ``tile_leads`` lead times of one sample, one call per lead time
  (its ``forward(imgs, lead_time)`` takes a single lead time);

with ``{"seconds": s}``, the time inside this process. EOF ends it. The driver
interleaves these commands with its own timings so both models see the same load.
"""

from __future__ import annotations

import json
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model_kwargs: dict, shape: tuple[int, ...], backward: bool) -> int | None:
    """FLOPs of one call on meta tensors, or None if the package does not run on meta."""
    import metnet

    try:
        with torch.device("meta"):
            model = metnet.MetNet(**model_kwargs)
            x = torch.zeros(shape)  # (B, T, C, H, W)
        with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(backward):
            out = model(x, 0)
            if backward:
                out.sum().backward()
        return int(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - any failure only means "not countable on meta"
        return None


def main() -> None:
    import metnet

    request = json.loads(sys.argv[1])
    torch.set_num_threads(request["threads"])
    torch.manual_seed(0)
    model = metnet.MetNet(**request["model"])
    frames, channels, size = request["frames"], request["raw_channels"], request["raw_size"]
    inputs = {b: torch.randn(b, frames, channels, size, size) for b in request["batches"]}

    def forward(batch: int, lead: int = 7) -> None:
        with torch.inference_mode():
            model.eval()(inputs[batch], lead)

    def forward_backward(batch: int) -> None:
        model.train().zero_grad(set_to_none=True)
        logits = model(inputs[batch], 7)  # (B, bins, h, w)
        target = torch.zeros(logits.shape[0], *logits.shape[2:], dtype=torch.long)
        F.cross_entropy(logits, target).backward()

    def tile() -> None:
        for lead in range(request["tile_leads"]):
            forward(1, lead)

    flops = {}
    for b in request["batches"]:
        shape = (b, frames, channels, size, size)
        flops[f"forward/b{b}"] = count_flops(request["model"], shape, backward=False)
        flops[f"forward_backward/b{b}"] = count_flops(request["model"], shape, backward=True)
    if flops.get("forward/b1") is not None:
        flops["tile"] = request["tile_leads"] * flops["forward/b1"]
    info = {
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "flops": flops,
    }
    print(json.dumps(info), flush=True)
    ops = {"forward": forward, "forward_backward": forward_backward}
    for line in sys.stdin:
        command = json.loads(line)
        start = time.perf_counter()
        if command["op"] == "tile":
            tile()
        else:
            ops[command["op"]](command["batch"])
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":
    main()
