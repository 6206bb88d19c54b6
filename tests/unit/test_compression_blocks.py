"""Compression building blocks: masks, pruning, structured cuts, quantization, exports, settings validation."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import nn

from mtdqn.compression import CompressionSettings, QPolicy, net_builder, wrap
from mtdqn.compression import report as compression_report
from mtdqn.compression.config import PruneSettings, normalize_chains
from mtdqn.compression.data import StatePool, q_values
from mtdqn.compression.export import ONNX_MISSING, export_onnx, export_torchscript
from mtdqn.compression.fit import fit_to_teacher
from mtdqn.compression.measure import count_macs, count_params, file_bytes, measure_latency
from mtdqn.compression.policy import hidden_widths
from mtdqn.compression.prune import (
    global_magnitude_masks,
    iterative_prune,
    linear_sparsity,
    prunable_weights,
    sparsity_schedule,
    structured_prune,
)
from mtdqn.compression.quantize import cast, quantize_int8
from mtdqn.compression.report import compress_chains, run_compression
from mtdqn.nets.multitask import MultiTaskQNetwork
from mtdqn.nets.q import QNetwork
from mtdqn.types import TaskSpec

SAME = [TaskSpec("a", 6, 4), TaskSpec("b", 6, 4)]
MIXED = [TaskSpec("small", 4, 3), TaskSpec("big", 6, 4)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _pool(obs_width: int, n_tasks: int, n: int = 512, seed: int = 1) -> StatePool:
    g = torch.Generator().manual_seed(seed)
    return StatePool(torch.randn(n, obs_width, generator=g), torch.randint(0, n_tasks, (n,), generator=g))


def _single(hidden=(32, 32), **kw) -> QPolicy:
    return wrap(QNetwork(6, 4, hidden=hidden, **kw))


def _clustered_states(n: int, seed: int) -> tuple[StatePool, torch.Tensor]:
    """States around 8 well separated centres (as a trained agent's visited states cluster), and each state's
    best action (centre k prefers action k mod 4)."""
    centres = torch.randn(8, 6, generator=torch.Generator().manual_seed(5)) * 3.0
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 8, (n,), generator=g)
    obs = centres[k] + 0.3 * torch.randn(n, 6, generator=g)
    return StatePool(obs, torch.zeros(n, dtype=torch.int64)), k % 4


def _trained_ish(hidden=(128, 128), steps=400) -> tuple[QPolicy, StatePool]:
    """A net fitted to Q*(s, a) = V(s) + 0.1 (s W)_a + 5 [a = best action of s's cluster]: a large state value and
    a clear best action, as a trained agent has in the states it visits."""
    pool, best = _clustered_states(4096, seed=1)
    g = torch.Generator().manual_seed(3)
    v, w = torch.randn(6, 1, generator=g) * 3.0, torch.randn(6, 4, generator=g)
    target = pool.obs @ v + 0.1 * pool.obs @ w + 5.0 * torch.nn.functional.one_hot(best, 4)
    policy = _single(hidden)
    fit_to_teacher(policy, pool, target, steps=steps, batch_size=256, lr=3e-3, loss="mse")
    return policy, pool


# ------------------------------------------------------------------ unstructured pruning


def test_global_masks_prune_exactly_the_smallest_weights():
    weights = {"a": torch.randn(10, 7), "b": torch.randn(3, 5), "c": torch.randn(20)}
    masks = global_magnitude_masks(weights, 0.8)
    total = sum(w.numel() for w in weights.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned == round(0.8 * total)
    kept_min = min(float(w[m].abs().min()) for w, m in zip(weights.values(), masks.values(), strict=True))
    pruned_max = max(float(w[~m].abs().max()) for w, m in zip(weights.values(), masks.values(), strict=True)
                     if (~m).any())
    assert pruned_max <= kept_min, "global: the pruned weights are the smallest in magnitude across all layers"
    assert all(m.shape == w.shape for w, m in zip(weights.values(), masks.values(), strict=True))


def test_sparsity_schedule_is_cubic_and_ends_at_the_target():
    s = sparsity_schedule(0.8, 4)
    assert s[-1] == pytest.approx(0.8)
    assert s == sorted(s) and s[0] == pytest.approx(0.8 * (1 - 0.75**3))


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9])
def test_iterative_prune_reaches_exact_sparsity_and_pruned_weights_stay_zero(sparsity):
    policy = wrap(MultiTaskQNetwork(SAME, hidden=[32, 32]))
    pool = _pool(6, 2)
    teacher_q = q_values(policy, pool)
    settings = PruneSettings(sparsity=sparsity, steps=3, finetune_steps=30, batch_size=64, lr=1e-2)
    pruned, info = iterative_prune(policy, pool, teacher_q, settings)
    weights = prunable_weights(pruned)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros == round(sparsity * total), "exactly the requested number of weights is zero"
    assert info["sparsity"] == pytest.approx(linear_sparsity(pruned)) == pytest.approx(zeros / total)
    for name, w in weights.items():  # the final masks hold through the last fine-tune
        assert bool((w[~info["masks"][name]] == 0).all())
    original = prunable_weights(policy)
    kept_changed = any(not torch.equal(w[info["masks"][n]], original[n].detach()[info["masks"][n]])
                       for n, w in weights.items())
    assert kept_changed, "the kept weights were fine-tuned"
    assert linear_sparsity(policy) == 0.0, "the original network is untouched"


def test_masks_hold_through_fine_tuning_with_a_large_learning_rate():
    policy = _single((32, 32))
    pool = _pool(6, 1)
    target = torch.randn(len(pool), 4) * 5  # far from the net's outputs: large gradients everywhere
    masks = global_magnitude_masks(prunable_weights(policy), 0.6)
    before = {n: w.detach().clone() for n, w in prunable_weights(policy).items()}
    fit_to_teacher(policy, pool, target, steps=50, batch_size=64, lr=0.05, loss="mse", masks=masks)
    for name, w in prunable_weights(policy).items():
        assert bool((w[~masks[name]] == 0).all()), f"{name}: a pruned weight came back"
        assert not torch.equal(w[masks[name]], before[name][masks[name]]), f"{name}: kept weights did not train"


# ------------------------------------------------------------------ structured pruning


def _zero_neurons(policy: QPolicy, keep_fraction: float) -> list[list[int]]:
    """Zero the incoming weights and bias of the first (1 - keep_fraction) of each hidden layer's neurons."""
    from mtdqn.compression.prune import hidden_layers

    dead = []
    with torch.no_grad():
        for layer in hidden_layers(policy.net):
            width = layer.producers[0].out_features
            idx = list(range(width - round(width * keep_fraction)))
            for p in layer.producers:
                p.weight[idx] = 0.0
                p.bias[idx] = 0.0
            dead.append(idx)
    return dead


NETS = {
    "qnet": lambda: wrap(QNetwork(6, 4, hidden=[16, 12])),
    "qnet_dueling": lambda: wrap(QNetwork(6, 4, hidden=[16, 12], dueling=True, activation="tanh")),
    "multihead": lambda: wrap(MultiTaskQNetwork(SAME, hidden=[16, 12])),
    "adapters": lambda: wrap(MultiTaskQNetwork(MIXED, hidden=[16, 12], activation="elu")),
    "film": lambda: wrap(MultiTaskQNetwork(SAME, hidden=[16, 12], architecture="conditioned", conditioning="film")),
    "onehot": lambda: wrap(MultiTaskQNetwork(SAME, hidden=[16, 12], architecture="conditioned")),
    "popart": lambda: wrap(MultiTaskQNetwork(SAME, hidden=[16, 12], popart_beta=3e-4)),
    "obs_norm": lambda: wrap(QNetwork(6, 4, hidden=[16, 12], obs_norm=True)),
}


@pytest.mark.parametrize("kind", sorted(NETS))
def test_structured_prune_keeps_outputs_when_removed_neurons_carry_zero_weight(kind):
    policy = NETS[kind]()
    _zero_neurons(policy, keep_fraction=0.5)
    pool = _pool(6, 2, n=256)
    pruned = structured_prune(policy, keep_fraction=0.5, criterion="l2")
    assert hidden_widths(pruned.net) == [8, 6]
    assert torch.allclose(pruned(pool.obs, pool.task_ids), policy(pool.obs, pool.task_ids), atol=1e-5)
    linears = [m for m in pruned.net.modules() if isinstance(m, nn.Linear)]
    assert all(m.weight.shape == (m.out_features, m.in_features) for m in linears)
    assert count_params(pruned)[0] < count_params(policy)[0]
    assert count_macs(pruned)[0] < count_macs(policy)[0], "the Linear layers really shrink"


def test_structured_prune_matches_a_fresh_smaller_net_of_the_same_kind():
    tasks = SAME
    builder = net_builder(partial(MultiTaskQNetwork, architecture="multihead", layer_norm=True), tasks, True)
    policy = QPolicy(builder([16, 12]), multitask=True)
    pruned = structured_prune(policy, keep_fraction=0.25)
    fresh = builder([4, 3])
    fresh.load_state_dict(pruned.net.state_dict())  # strict: same names and shapes, LayerNorm shrunk too
    norms = [m for m in pruned.net.modules() if isinstance(m, nn.LayerNorm)]
    assert [n.normalized_shape for n in norms] == [(4,), (3,)]


def test_structured_prune_removes_the_least_salient_neurons():
    policy = _single((16, 12))
    dead = _zero_neurons(policy, keep_fraction=0.75)  # 4 and 3 dead neurons
    with torch.no_grad():  # make the dead neurons' outgoing weights large: only incoming counts for "l2"
        policy.net.torso[2].weight[:, dead[0]] = 100.0
    pruned = structured_prune(policy, 0.75, criterion="l2")
    pool = _pool(6, 1, n=128)
    assert torch.allclose(pruned(pool.obs, pool.task_ids), policy(pool.obs, pool.task_ids), atol=1e-4)


# ------------------------------------------------------------------ quantization and casts


def test_int8_actions_agree_with_fp32_and_the_file_is_much_smaller(tmp_path):
    policy, pool = _trained_ish(hidden=(256, 256), steps=400)  # the width of the driving agents
    check, best = _clustered_states(2000, seed=9)  # a fixed batch the net was not fitted on
    assert (policy(check.obs, check.task_ids).argmax(-1) == best).float().mean() > 0.99, "the fp32 net is decisive"
    q8, info = quantize_int8(policy)
    assert info["engine"] in torch.backends.quantized.supported_engines
    assert not any(isinstance(m, nn.Linear) for m in q8.net.modules()), "every Linear is quantized"
    fp32_actions = policy(check.obs, check.task_ids).argmax(-1)
    agree = (q8(check.obs, check.task_ids).argmax(-1) == fp32_actions).float().mean()
    assert agree >= 0.99
    q_fp32, q_int8 = policy(check.obs, check.task_ids), q8(check.obs, check.task_ids)
    assert not torch.equal(q_int8, q_fp32), "really int8"
    assert (q_int8 - q_fp32).abs().max() < 0.05 * q_fp32.abs().max(), "close to the fp32 Q-values"
    fp32_bytes, int8_bytes = file_bytes(policy, tmp_path / "a.pt"), file_bytes(q8, tmp_path / "b.pt")
    assert fp32_bytes >= 3 * int8_bytes
    assert count_params(q8)[0] == count_params(policy)[0], "packed int8 weights are counted"


@pytest.mark.parametrize("method", ["fp16", "bf16"])
def test_half_precision_weights_halve_the_file_and_keep_actions(method, tmp_path):
    policy, pool = _trained_ish(hidden=(64, 64), steps=200)
    half, info = cast(policy, method)
    assert all(p.dtype == half.dtype for p in half.parameters())
    q = half(pool.obs, pool.task_ids)
    assert q.dtype == torch.float32
    agree = (q.argmax(-1) == policy(pool.obs, pool.task_ids).argmax(-1)).float().mean()
    assert agree >= 0.97
    assert file_bytes(half, tmp_path / "h.pt") < 0.6 * file_bytes(policy, tmp_path / "f.pt")


# ------------------------------------------------------------------ exports


def _export_cases():
    multi = wrap(MultiTaskQNetwork(MIXED, hidden=[32, 32]))
    q8, _ = quantize_int8(wrap(MultiTaskQNetwork(SAME, hidden=[32, 32])))
    return {"multihead": (multi, 6, 2), "int8": (q8, 6, 2), "structured": (structured_prune(_single(), 0.5), 6, 1)}


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")
@pytest.mark.parametrize("case", ["multihead", "int8", "structured"])
def test_torchscript_export_picks_the_same_actions(case, tmp_path):
    policy, width, n_tasks = _export_cases()[case]
    pool = _pool(width, n_tasks, n=300)  # another batch size than the 8 states it is traced with
    result, loaded = export_torchscript(policy, pool.obs, pool.task_ids, tmp_path / "m.ts")
    assert result["status"] == "ok" and result["action_agreement"] == 1.0
    reloaded = torch.jit.load(str(tmp_path / "m.ts"))
    assert torch.equal(reloaded(pool.obs, pool.task_ids).argmax(-1), policy(pool.obs, pool.task_ids).argmax(-1))
    assert loaded is not None


def test_onnx_export_picks_the_same_actions(tmp_path):
    pytest.importorskip("onnx", reason="optional extra `export`")
    policy, width, n_tasks = _export_cases()["multihead"]
    pool = _pool(width, n_tasks, n=300)
    result = export_onnx(policy, pool.obs, pool.task_ids, tmp_path / "m.onnx")
    assert result["status"] == "ok" and result["action_agreement"] == 1.0
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_onnx_export_is_skipped_with_a_message_without_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr("mtdqn.compression.export.onnx_available", lambda: False)
    pool = _pool(6, 1, n=16)
    result = export_onnx(_single(), pool.obs, pool.task_ids, tmp_path / "m.onnx")
    assert result == {"status": "skipped", "message": ONNX_MISSING}
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------ measurements


def test_counts_of_params_nonzero_and_macs():
    policy = wrap(QNetwork(6, 4, hidden=[8, 5]))
    with torch.no_grad():
        policy.net.torso[0].weight[:2] = 0.0
    dense_macs = 6 * 8 + 8 * 5 + 5 * 4
    assert count_params(policy) == (dense_macs + 8 + 5 + 4, dense_macs + 8 + 5 + 4 - 12)
    assert count_macs(policy) == (dense_macs, dense_macs - 12)


def test_latency_is_a_median_per_policy_and_batch_size():
    small, big = _single((8,)), _single((512, 512))
    obs = torch.randn(64, 6)
    ids = torch.zeros(64, dtype=torch.int64)
    ms = measure_latency({"small": small, "big": big}, {64: (obs, ids)}, calls=5, rounds=3, warmup=2)
    assert set(ms) == {"small", "big"} and all(v[64] > 0 for v in ms.values())
    assert ms["big"][64] > ms["small"][64]
    assert torch.get_num_threads() == 1


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"methods": ["distill", "squeeze"]}, "'squeeze' is not one of"),
        ({"methods": ["prune"], "prune": {"sparsity": 1.0}}, "compression.prune.sparsity=1.0 must be a number in [0, 1)"),
        ({"methods": ["prune"], "prune": {"sparsity": -0.1}}, "compression.prune.sparsity=-0.1"),
        ({"methods": ["structured"], "structured": {"keep_fraction": 0.0}}, "keep_fraction=0.0 must be a number in (0, 1]"),
        ({"methods": [["quantize", "distill"]]}, "trains after 'quantize'"),
        ({"methods": ["distill"], "distill": {"hidden": []}}, "compression.distill.hidden=[]"),
        ({"methods": ["distill"], "distill": {"steps": 0}}, "compression.distill.steps=0 must be an integer > 0"),
        ({"methods": ["prune"], "prune": {"loss": "huber"}}, "compression.prune.loss='huber' is not one of"),
        ({"methods": ["distill"], "distill": {"loss": "l1"}}, "compression.distill.loss='l1' is not one of"),
        ({"methods": ["prune"], "prun": {}}, "compression.prun is not a setting"),
        ({"methods": ["distill"], "eval": {"episodes": -1}}, "compression.eval.episodes=-1 must be an integer > 0"),
        ({"methods": ["quantize"], "eval": {"episodes": 1.5}}, "compression.eval.episodes=1.5 must be an integer > 0"),
        ({"methods": ["distill"], "distill": {"steps": "abc"}}, "compression.distill.steps='abc' must be an integer"),
        ({"methods": ["distill"], "distill": {"hidden": 64}}, "compression.distill.hidden=64 must be a non-empty"),
        ({"methods": 5}, "compression.methods=5 must be a list of methods"),
        ({"methods": [["prune"], 3]}, "compression.methods: 3 is neither a method nor a chain"),
    ],
)
def test_bad_settings_name_the_key_the_value_and_what_is_allowed(values, message):
    with pytest.raises(ValueError) as err:
        CompressionSettings.from_dict(values)
    assert message in str(err.value)


WIRING = ("_target_", "_convert_", "net", "output_dir")


def _conf_leaves() -> dict[str, object]:
    """Every setting of conf/compression/default.yaml (dotted keys relative to `compression`), resolved."""
    from pathlib import Path

    from omegaconf import OmegaConf

    conf = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "compression" / "default.yaml")
    settings = {k: v for k, v in OmegaConf.to_container(conf, resolve=False).items() if k not in WIRING}
    node = OmegaConf.merge({"seed": 0}, {"compression": settings})  # no callbacks node: the oc.select defaults
    values = OmegaConf.to_container(node.compression, resolve=True)

    def walk(tree: dict, prefix: str) -> dict[str, object]:
        out: dict[str, object] = {}
        for k, v in tree.items():
            out.update(walk(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    return walk(values, "")


def _wrong_types(default: object) -> list[object]:
    """Values of the wrong type for a setting whose default is `default`."""
    if isinstance(default, bool):
        return ["yes", 1, None]
    if isinstance(default, int):
        return [1.5, True, "abc", None, [4]]
    if isinstance(default, float):
        return ["abc", True, None, [0.5]]
    if isinstance(default, str):
        return [3, True, None, ["kl"]]
    assert isinstance(default, list) and all(isinstance(v, int) for v in default), default
    return [64, "abc", [], [True], [1.5], ["a"], None]


def test_every_setting_of_the_default_conf_refuses_a_wrong_type_naming_its_key():
    """conf/compression/default.yaml, leaf by leaf: a value of the wrong type (a bool is no integer, 1.5 no integer,
    a string no number, a scalar no list of widths) is a ValueError naming the full key, never a TypeError later."""
    import copy

    leaves = _conf_leaves()
    assert len(leaves) > 30 and "eval.episodes" in leaves and "distill.hidden" in leaves
    base = {"methods": [["distill", "quantize"], ["prune"], ["structured"], ["fp16"]], "seed": 0}
    CompressionSettings.from_dict(base)  # the defaults pass
    defaults = CompressionSettings()
    for key in leaves:
        default = defaults  # its type in the dataclass: the yaml writes the float data.max_epochs as 20
        for part in key.split("."):
            default = getattr(default, part)
        for bad in [5, True, [1], [["prune", 2]], {"a": 1}] if key == "methods" else _wrong_types(default):
            values = copy.deepcopy(base)
            *sections, name = key.split(".")
            node = values
            for section in sections:
                node = node.setdefault(section, {})
            node[name] = bad
            with pytest.raises(ValueError) as err:
                CompressionSettings.from_dict(values)
            assert f"compression.{key}" in str(err.value), (key, bad, str(err.value))


def test_integral_numbers_are_coerced_to_the_setting_type():
    settings = CompressionSettings.from_dict({"eval": {"episodes": 8.0}, "data": {"max_epochs": 3},
                                              "distill": {"hidden": [16.0, 8]}})
    assert settings.eval.episodes == 8 and isinstance(settings.eval.episodes, int)
    assert isinstance(settings.data.max_epochs, float)
    assert settings.distill.hidden == [16, 8] and all(isinstance(h, int) for h in settings.distill.hidden)


def test_chains_flat_nested_and_plus_forms():
    assert normalize_chains(["distill", "quantize"]) == [["distill", "quantize"]]
    assert normalize_chains([["distill", "quantize"], ["prune"]]) == [["distill", "quantize"], ["prune"]]
    assert normalize_chains(["distill+quantize", "prune"]) == [["distill", "quantize"], ["prune"]]
    assert normalize_chains([]) == []
    settings = CompressionSettings.from_dict({"methods": ["structured", "bf16"], "latency": {"batch_sizes": [1]}})
    assert settings.methods == [["structured", "bf16"]] and settings.latency.batch_sizes == [1]
    assert math.isclose(settings.prune.sparsity, 0.8)


def test_each_step_of_a_chain_compresses_the_previous_steps_result():
    """distill+structured halves the distilled student's widths (8 -> 4), not the teacher's (32 -> 16), and
    distill+fp16 casts the student: the teacher's parameter count would mean the step started from the original."""
    teacher = _single((32, 32))
    builder = net_builder(QNetwork, [TaskSpec("a", 6, 4)], multitask=False)
    settings = CompressionSettings.from_dict({
        "methods": [["distill", "structured"], ["distill", "fp16"]], "distill": {"hidden": [8, 8], "steps": 20},
        "structured": {"keep_fraction": 0.5, "finetune_steps": 2}})
    policies, skipped = compress_chains(teacher, _pool(6, 1, n=256), builder, settings)
    assert list(policies) == ["original", "distill", "distill+structured", "distill+fp16"] and not skipped
    assert hidden_widths(policies["distill"][0].net) == [8, 8]
    assert hidden_widths(policies["distill+structured"][0].net) == [4, 4]
    assert count_params(policies["distill+fp16"][0]) == count_params(policies["distill"][0])
    assert count_params(policies["distill"][0])[0] < count_params(teacher)[0]


def test_each_compressed_policy_is_evaluated_itself(monkeypatch, tmp_path):
    """A "distilled" student that always steers left and brakes (action 0) gets its own return in the report, not the
    original's: its retention is not 1. (run_compression end to end on lane_keep, 2 short episodes, no exports.)"""
    from mtdqn.envs import env_factory, task_spec

    kwargs = {"max_episode_steps": 30}
    task, make_env = task_spec("driving", "lane_keep", kwargs), env_factory("driving", "lane_keep", kwargs)
    original = wrap(QNetwork(task.obs_dim, task.n_actions, hidden=[8]))
    brake = wrap(QNetwork(task.obs_dim, task.n_actions, hidden=[8]))
    with torch.no_grad():
        brake.net.head.weight.zero_()
        brake.net.head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(0), task.n_actions).float())
    monkeypatch.setattr(compression_report, "distill", lambda *args, **kwargs: (brake, {}))
    settings = CompressionSettings.from_dict({
        "methods": [["distill"]], "data": {"rollout_fraction": 0.0}, "eval": {"episodes": 2},
        "latency": {"batch_sizes": [1], "calls": 1, "rounds": 1, "warmup": 0},
        "export": {"torchscript": False, "onnx": False}})
    builder = net_builder(QNetwork, [task], multitask=False)
    report = run_compression(original, builder, [task], [make_env], [torch.randn(64, task.obs_dim)], settings,
                             tmp_path)
    entries = {e["name"]: e for e in report["policies"]}
    envs = [make_env(num_envs=2, device="cpu")]
    on_its_own = [compression_report.evaluate(p, [task], envs, task.obs_dim, settings.eval.seed)["mean_return"]
                  for p in (original, brake)]
    assert on_its_own[0] != pytest.approx(on_its_own[1])  # the two policies do play differently
    assert [entries[n]["mean_return"] for n in ("original", "distill")] == pytest.approx(on_its_own)
    assert entries["distill"]["retention"] != pytest.approx(1.0)


def test_dataclass_defaults_match_conf_compression_default():
    from pathlib import Path

    from omegaconf import OmegaConf

    conf = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "compression" / "default.yaml")
    node = OmegaConf.merge({"seed": 0}, {"compression": conf})  # no callbacks node: the oc.select defaults
    values = OmegaConf.to_container(node.compression, resolve=False)
    for key in ("_target_", "_convert_", "net", "output_dir"):
        values.pop(key)
    values["seed"] = 0
    values["eval"] = {"episodes": node.compression.eval.episodes, "seed": node.compression.eval.seed}
    from_conf = CompressionSettings.from_dict(values)
    defaults = CompressionSettings()
    for section in ("distill", "prune", "structured", "quantize", "data", "eval", "latency", "export"):
        assert getattr(from_conf, section) == getattr(defaults, section), section
    assert from_conf.methods == [["distill", "quantize"], ["prune"], ["structured"], ["quantize"], ["fp16"]]
