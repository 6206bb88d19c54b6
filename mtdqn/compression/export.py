"""Export a policy to TorchScript (and ONNX when the `onnx` package is importable), checking its actions."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

ONNX_INT8 = ("torch.onnx cannot export torch.ao dynamic int8 Linear layers (quantized::linear_dynamic): "
             "ONNX export skipped, use the TorchScript file")
ONNX_MISSING = "onnx is not installed (pip install -e '.[export]'): ONNX export skipped"


def agreement(a: Tensor, b: Tensor) -> float:
    """Fraction of equal entries of two action tensors."""
    return float((a.reshape(-1) == b.reshape(-1)).float().mean())


@torch.no_grad()
def export_torchscript(policy: nn.Module, obs: Tensor, task_ids: Tensor, path: Path
                       ) -> tuple[dict, torch.jit.ScriptModule | None]:
    """torch.jit.trace the policy, save it, load it back and compare its greedy actions on (obs, task_ids).
    Returns the result and the loaded module (None when the export failed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarning on shape checks, torch.jit deprecation notice
            traced = torch.jit.trace(policy.eval(), (obs[:8], task_ids[:8]), check_trace=False)
            torch.jit.save(traced, str(path))
            loaded = torch.jit.load(str(path))
            exported = loaded(obs, task_ids).argmax(-1)
    except Exception as exc:  # noqa: BLE001 - any exporter failure is reported, not fatal
        return {"status": "failed", "message": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}, None
    expected = policy(obs, task_ids).argmax(-1)
    result = {"status": "ok", "path": str(path), "bytes": path.stat().st_size,
              "action_agreement": agreement(exported, expected)}
    return result, loaded


def onnx_available() -> bool:
    """Whether the optional `onnx` package (extra `export`) is importable."""
    return importlib.util.find_spec("onnx") is not None


def _run_onnx(path: Path, obs: Tensor, task_ids: Tensor) -> np.ndarray:
    """Q-values from the ONNX file: onnxruntime when installed, else onnx's reference evaluator."""
    feeds = {"obs": obs.numpy(), "task_ids": task_ids.numpy()}
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        return session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
    import onnx
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(path))
    names = {i.name for i in model.graph.input}
    return ReferenceEvaluator(model).run(None, {k: v for k, v in feeds.items() if k in names})[0]


@torch.no_grad()
def export_onnx(policy: nn.Module, obs: Tensor, task_ids: Tensor, path: Path) -> dict:
    """torch.onnx.export (TorchScript-based exporter, dynamic batch), then compare actions on (obs, task_ids)."""
    if not onnx_available():
        return {"status": "skipped", "message": ONNX_MISSING}
    if any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in policy.modules()):
        return {"status": "skipped", "message": ONNX_INT8}
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(policy.eval(), (obs[:8], task_ids[:8]), str(path), dynamo=False,
                              input_names=["obs", "task_ids"], output_names=["q_values"],
                              dynamic_axes={"obs": {0: "batch"}, "task_ids": {0: "batch"}, "q_values": {0: "batch"}})
            exported = torch.from_numpy(np.asarray(_run_onnx(path, obs, task_ids), dtype=np.float32)).argmax(-1)
    except Exception as exc:  # noqa: BLE001 - e.g. quantized ops the exporter does not support
        return {"status": "failed", "message": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    expected = policy(obs, task_ids).argmax(-1)
    return {"status": "ok", "path": str(path), "bytes": path.stat().st_size,
            "action_agreement": agreement(exported, expected)}
