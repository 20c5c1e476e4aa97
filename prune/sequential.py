"""Sequential, layer-by-layer pruning of a decoder-only LM.

1. Run the calibration windows up to the first decoder layer and keep its inputs (and the keyword
   arguments the model passes to every layer: rotary embeddings, masks, positions).
2. For each decoder layer, for each group of Linears that read the same input (q/k/v, then o, then
   gate/up, then down in a Llama block), collect that group's input statistics, prune the group, and move
   on: later groups see the outputs of the groups already pruned.
3. Run the pruned layer to produce the inputs of the next one.
With `permute`, the Linear a channel permutation decides (down_proj, o_proj) has it chosen from its statistics and
folded into the block just before it is pruned (sparsetrt.prune.permute; the block computes the same); the hidden
order, shared by every block, is chosen before the first one from a pass over the unpruned model (`dense_pass`).
Only one group's statistics are alive at a time, and each statistics pass stops as soon as the group's
inputs have been seen.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from functools import partial

import torch
from tqdm.auto import tqdm

from sparsetrt.calibration.stats import StopForward, collect_input_stats
from sparsetrt.errors import SparsetrtError
from sparsetrt.modules import decoder_layers, target_linears
from sparsetrt.prune import permute as permutations
from sparsetrt.prune.magnitude import magnitude_prune
from sparsetrt.prune.masks import zero_fraction
from sparsetrt.prune.result import PruneResult
from sparsetrt.prune.settings import METHODS, Pattern
from sparsetrt.prune.sparsegpt import row_reconstruction_errors, sparsegpt_prune
from sparsetrt.prune.wanda import wanda_prune


@dataclass
class ModuleReport:
    name: str
    shape: list[int]
    pattern: str
    zero_fraction: float
    error: float
    relative_error: float
    error_kind: str
    damping: float | None
    seconds: float

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "name"}


def check_prunable(modules: dict[str, torch.nn.Linear], pattern: Pattern | dict[str, Pattern]) -> None:
    if not modules:
        raise SparsetrtError("no Linear inside the decoder blocks matches the targets; check --targets/--exclude")
    for name, module in modules.items():
        p = pattern[name] if isinstance(pattern, dict) else pattern
        if p.is_nm and module.in_features % p.m:
            raise SparsetrtError(
                f"{name} has in_features={module.in_features}, not divisible by M={p.m}; "
                f"exclude it (--exclude '{name}') or choose another pattern"
            )


def prune_model(
    model: torch.nn.Module,
    calib_windows: torch.Tensor | None,
    method: str,
    pattern: Pattern | dict[str, Pattern],
    targets=("*",),
    exclude=(),
    batch_size: int = 8,
    sparsegpt_options: dict | None = None,
    progress: bool = True,
    hooks: LayerHooks | None = None,
    permuter: Permuter | None = None,
) -> list[ModuleReport]:
    """Prune `model` in place; return one report per pruned module.

    `pattern` is one Pattern for every target, or {module name: Pattern} from a schedule: then exactly those
    modules are pruned, each with its own pattern (modules a schedule keeps dense are simply absent).
    `permuter` (Permuter) chooses and folds in the exact channel permutations before the Linears they decide.
    """
    if method not in METHODS:
        raise SparsetrtError(f"unknown method '{method}'; use one of {', '.join(METHODS)}")
    modules = target_linears(model, targets, exclude)
    if isinstance(pattern, dict):
        unknown = sorted(set(pattern) - set(modules))
        if unknown:
            raise SparsetrtError(f"the schedule names modules that are not targets: {unknown[:3]}")
        modules = {n: m for n, m in modules.items() if n in pattern}
        patterns = pattern
    else:
        patterns = {n: pattern for n in modules}
    check_prunable(modules, patterns)
    if method != "magnitude" and (calib_windows is None or len(calib_windows) == 0):
        raise SparsetrtError(f"method '{method}' needs calibration windows")
    hooks = hooks or LayerHooks("cpu")
    if permuter and "hidden" in permuter.axes:  # one order for every block: chosen before the first is pruned
        permuter.choose_hidden(model, calib_windows, hooks, batch_size, progress)
    if method == "magnitude":  # needs no data: prune every target directly, one block after the other
        hooks.captured()  # nothing to capture
        reports = []
        for index, layer in enumerate(decoder_layers(model)):
            hooks.load(index, layer)
            inside = {id(m) for m in layer.modules()}
            for name, mod in modules.items():
                if id(mod) in inside:
                    if permuter:
                        permuter.before({name: mod}, None)
                    reports.append(_prune_module(name, mod, method, patterns[name], None))
            hooks.done(index, layer)
        return reports

    described = str(pattern) if isinstance(pattern, Pattern) else "scheduled"
    return sequential_update(model, calib_windows, modules,
                             lambda group, stats: _prune_group(group, method, patterns, stats, sparsegpt_options or {}),
                             want_hessian=(method == "sparsegpt"), batch_size=batch_size, progress=progress,
                             desc=f"{method} {described}", hooks=hooks, before_group=permuter and permuter.before)


class Permuter:
    """The exact channel permutations of `axes` (permute.AXES), each chosen from the saliency of the Linear it
    decides, in the pruning method's terms, just before that Linear is pruned, and folded into its block; the
    statistics of its inputs are permuted with it, so the pruning that follows sees the layout it will keep. The
    hidden order (`choose_hidden`) comes first, from every stream-reading Linear of the unpruned model."""

    def __init__(self, model: torch.nn.Module, axes: list[str], method: str, patterns: dict[str, Pattern],
                 damping: float = 0.01, seed: int = 0):
        self.axes, self.method, self.patterns, self.damping, self.seed = axes, method, patterns, damping, seed
        self.hidden: dict | None = None
        self.sites: dict[int, object] = {}
        for layer in decoder_layers(model):
            if "mlp" in axes and (site := permutations.mlp_site(layer)):
                self.sites[id(site.down)] = site
            if "heads" in axes and (site := permutations.head_site(layer, model.config)):
                self.sites[id(site.o_proj)] = site
        self.records: dict[str, dict] = {}
        self.chosen: list[torch.Tensor] = []

    def before(self, group: dict[str, torch.nn.Linear], stats) -> dict[str, torch.Tensor] | None:
        """Permute the block when `group` is the one Linear a permutation decides; {its name: the order of its input
        columns now} (None: nothing changed)."""
        if len(group) != 1:
            return None
        (name, module), = group.items()
        site, pattern = self.sites.get(id(module)), self.patterns.get(name)
        if site is None or pattern is None or not pattern.is_nm:
            return None
        start = time.perf_counter()
        n, m = pattern.n, pattern.m
        scores = permutations.saliency(module.weight.data, self.method, stats, self.damping)
        if isinstance(site, permutations.MlpSite):
            chosen, axis = [permutations.search_permutation(scores, n, m)], "mlp"
            columns = site.apply(chosen[0])
        else:
            chosen, axis = [permutations.search_permutation(part, n, m) for part in site.group_scores(scores)], "heads"
            columns = site.apply(chosen)
        self.chosen += chosen
        permutations.permute_stats(stats, columns)
        total = float(scores.sum())
        self.records[name] = {"axis": axis,
                              "kept_before": permutations.kept(scores, n, m) / total,
                              "kept_after": permutations.kept(scores[:, columns.to(scores.device)], n, m) / total,
                              "seconds": round(time.perf_counter() - start, 3)}
        return {name: columns}

    def choose_hidden(self, model: torch.nn.Module, windows: torch.Tensor | None, hooks: LayerHooks,
                      batch_size: int = 8, progress: bool = True) -> None:
        """Choose the residual stream's order from the saliency of every Linear that reads it (the unpruned
        model's, over the first permute.HIDDEN_WINDOWS windows, rows sampled evenly: permute.HIDDEN_ROWS), and fold
        it into the model through `hooks` (in memory, or into each block as streaming reads it). A model whose
        stream this cannot follow is left as it is, and said so."""
        plan = permutations.hidden_plan(model)
        pattern = next((self.patterns[name] for groups in (plan.readers if plan else []) for g in groups
                        for name in g if name in self.patterns and self.patterns[name].is_nm), None)
        if pattern is None:
            self.hidden = {"axis": "hidden", "skipped": "no Linear pruned N:M reads the residual stream" if plan
                           else "a tensor on the residual stream is not one whose order this knows how to follow"}
            return
        start = time.perf_counter()
        n, m = pattern.n, pattern.m  # the readers pruned with this one pattern choose the order
        readers = [[{name: linear for name, linear in g.items() if self.patterns.get(name) == pattern}
                    for g in groups] for groups in plan.readers]
        names = [name for groups in readers for g in groups for name in g]
        total_rows = sum(g[name].out_features for groups in readers for g in groups for name in g)
        rate = min(1.0, permutations.HIDDEN_ROWS / total_rows)
        generator = torch.Generator().manual_seed(self.seed)
        parts = []

        def visit(index: int, stats: dict | None) -> None:
            for group in readers[index]:
                first = next(iter(group), None)
                for linear in group.values():
                    scores = permutations.saliency(linear.weight.data, self.method, stats and stats[first],
                                                   self.damping)
                    parts.append(permutations.sample_rows(scores, rate, generator).cpu())

        watch = [{next(iter(g)): next(iter(g.values())) for g in groups if g} for groups in readers]
        windows = windows[:permutations.HIDDEN_WINDOWS] if self.method != "magnitude" else None
        dense_pass(model, windows, hooks, watch, visit, want_hessian=self.method == "sparsegpt",
                   batch_size=batch_size, progress=progress)
        scores = torch.cat(parts)
        perm = permutations.search_permutation(scores, n, m, seed=self.seed)
        hooks.fold_hidden(model, plan, perm)
        self.chosen.append(perm)
        total = float(scores.sum())
        self.hidden = {"axis": "hidden", "linears": len(names), "rows_sampled": scores.shape[0],
                       "kept_before": permutations.kept(scores, n, m) / total,
                       "kept_after": permutations.kept(scores[:, perm], n, m) / total,
                       "seconds": round(time.perf_counter() - start, 3)}

    def summary(self, axes: list[str]) -> dict:
        """What sparsity.json records: the axes, each permuted Linear's kept saliency (a share of its total) with
        and without its permutation, the hidden order's (over the rows it was searched on), and a digest of the
        permutations."""
        before = [r["kept_before"] for r in self.records.values()]
        after = [r["kept_after"] for r in self.records.values()]
        record = {"axes": axes, "modules_permuted": len(self.records), "digest": permutations.digest(self.chosen),
                  "mean_kept_before": sum(before) / max(len(before), 1),
                  "mean_kept_after": sum(after) / max(len(after), 1),
                  "seconds": round(sum(r["seconds"] for r in self.records.values())
                                   + (self.hidden or {}).get("seconds", 0), 2),
                  "modules": self.records}
        if self.hidden:
            record["hidden"] = self.hidden
        return record


class LayerHooks:
    """Where each decoder block lives while it is processed. The default keeps the whole model where it is and
    moves only the block being worked on to `device` (the rest stays on the host); layer streaming
    (sparsetrt.prune.streaming) reads the block from the checkpoint instead and writes it out afterwards."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)

    def captured(self) -> None:
        """The first block's inputs are captured: what only the capture needed can go."""

    def load(self, index: int, layer: torch.nn.Module) -> None:
        layer.to(self.device)

    def done(self, index: int, layer: torch.nn.Module) -> None:
        layer.to("cpu")

    def release(self, index: int, layer: torch.nn.Module) -> None:
        """A block a read-only pass (`dense_pass`) is finished with."""
        self.done(index, layer)

    def fold_hidden(self, model: torch.nn.Module, plan, perm: torch.Tensor) -> None:
        """Fold the hidden order into the model (every tensor is in memory here)."""
        plan.fold(model, perm)

    def keep_weight(self, name: str, module: torch.nn.Linear, columns: torch.Tensor | None = None):
        """A way back to `module`'s weight as it is now (before its group's update), for the exact shortcut that
        propagates the block's output: here a copy; streaming re-reads it from the checkpoint instead of holding
        a second copy (an 8B down_proj is 235 MB in fp32), its input channels reordered by `columns` when a
        permutation was folded into the block since it was read."""
        weight = module.weight.data.clone()
        return lambda: weight


def sequential_update(model: torch.nn.Module, calib_windows: torch.Tensor, modules: dict[str, torch.nn.Linear],
                      update_group, want_hessian: bool, batch_size: int = 8, progress: bool = True,
                      desc: str = "sequential", hooks: LayerHooks | None = None, before_group=None) -> list:
    """Walk the decoder blocks in order; in each, hand every group of Linears that share one input to
    `update_group(group, stats)` (which rewrites their weights and returns a list of reports) with
    statistics of inputs that already reflect every earlier update. Used by pruning and by GPTQ. `hooks` say
    where each block is while it is processed (LayerHooks: on its device; streaming: read and written out).
    `before_group(group, stats)` may rewrite the block (an exact permutation) before the group is updated."""
    hooks = hooks or LayerHooks("cpu")
    layers = decoder_layers(model)
    with torch.no_grad():
        cached = to_device(capture_first_layer_inputs(model, layers, calib_windows, batch_size), hooks.device)
        hooks.captured()
        reports = []
        bar = progress_bar(len(layers), desc, progress)
        name_of = {id(m): n for n, m in modules.items()}
        first_groups = None  # (layer index, groups) of the first block, reused for identical blocks
        for index, layer in enumerate(layers):
            hooks.load(index, layer)
            in_layer = {name_of[id(m)]: m for m in layer.modules() if id(m) in name_of}
            if not in_layer:
                cached = _propagate(layer, cached)
                hooks.done(index, layer)
                bar.update(1)
                continue
            groups = _same_groups(first_groups, in_layer, index) or _linear_groups(layer, cached[0], in_layer)
            first_groups = first_groups or (index, groups)
            forwards = [partial(layer, hidden, **kwargs) for hidden, kwargs in cached]
            targets_of = {c: {name_of[id(m)] for m in child.modules() if id(m) in name_of}
                          for c, child in layer.named_children()}
            updated: set[str] = set()
            memo: dict[str, list] = {}
            for k, group in enumerate(groups):
                last = k == len(groups) - 1
                # Linears of a group read one input: one set of statistics serves them all. The last
                # group's pass runs the whole block and keeps its inputs for the exact shortcut below.
                rep_name, rep = next(iter(group.items()))
                finished = {c for c, t in targets_of.items() if t and t <= updated}
                with _memoized_children(layer, finished, memo, len(forwards)):
                    stats, outputs = collect_input_stats({rep_name: rep}, forwards, want_hessian=want_hessian,
                                                         stop_early=not last, keep_inputs=last)
                updated |= set(group)
                permuted = (before_group and before_group(group, stats[rep_name])) or {}
                old = {n: hooks.keep_weight(n, m, permuted.get(n)) for n, m in group.items()} if last else None
                reports += update_group(group, stats[rep_name])
                bar.set_postfix_str(f"layer {index}: {', '.join(n.rsplit('.', 1)[-1] for n in group)}")
            cached = _propagate_last_group(layer, cached, outputs, stats[rep_name].inputs, group, old)
            del stats, outputs, old, forwards, memo
            hooks.done(index, layer)
            bar.update(1)
        bar.close()
    return reports


def dense_pass(model: torch.nn.Module, windows: torch.Tensor | None, hooks: LayerHooks,
               watch: list[dict[str, torch.nn.Linear]], visit, want_hessian: bool, batch_size: int = 8,
               progress: bool = True) -> None:
    """Walk the blocks once, changing nothing: in block k, `visit(k, stats)` with the statistics of the inputs of
    `watch[k]` ({name: Linear}) over the calibration windows as the unpruned model computes them (no windows:
    visit(k, None), weights only). `hooks` place each block, and release it unwritten."""
    layers = decoder_layers(model)
    with torch.no_grad():
        cached = None
        if windows is not None:
            cached = to_device(capture_first_layer_inputs(model, layers, windows, batch_size), hooks.device)
        for index, layer in enumerate(tqdm(layers, desc="hidden order", unit="layer", disable=not progress,
                                           leave=False)):
            hooks.load(index, layer)
            stats = None
            if cached is not None:
                forwards = [partial(layer, hidden, **kwargs) for hidden, kwargs in cached]
                stats, outputs = collect_input_stats(watch[index], forwards, want_hessian=want_hessian,
                                                     stop_early=False)
                cached = [(layer_output(out), kwargs) for out, (_, kwargs) in zip(outputs, cached)]
            visit(index, stats)
            hooks.release(index, layer)


def to_device(cached: list, device: torch.device) -> list:
    """The captured (hidden states, layer kwargs) moved to the device the blocks are processed on."""
    if device.type == "cpu":
        return cached

    def move(value):
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if isinstance(value, tuple):
            return tuple(move(v) for v in value)
        return value

    return [(hidden.to(device), {k: move(v) for k, v in kwargs.items()}) for hidden, kwargs in cached]


@contextlib.contextmanager
def _memoized_children(layer, finished: set[str], memo: dict[str, list], passes: int):
    """Replay the outputs of the block's children whose weights are all final (e.g. self_attn once q, k,
    v and o are pruned): their inputs come from the unchanged block input, so their outputs are too.

    A finished child is recorded on the first pass that reaches it and replayed on later passes, which
    saves recomputing attention while the MLP is being pruned.
    """
    children = dict(layer.named_children())
    handles, replaced = [], []
    for name in finished:
        child = children[name]
        if len(memo.get(name, ())) == passes:
            outputs = iter(memo[name])
            child.forward = lambda *args, _outputs=outputs, **kwargs: next(_outputs)
            replaced.append(child)
        else:
            memo[name] = []
            handles.append(child.register_forward_hook(lambda _m, _a, out, _store=memo[name]: _store.append(out)))
    try:
        yield
    finally:
        for child in replaced:
            del child.forward  # back to the class's forward
        for handle in handles:
            handle.remove()


def _propagate(layer, cached):
    return [(layer_output(layer(hidden, **kwargs)), kwargs) for hidden, kwargs in cached]


def _propagate_last_group(layer, cached, outputs, inputs, group, old_weights):
    """Next layer's inputs after pruning the last group, without another pass through the block.

    When the last group is one Linear whose output is added straight into the residual stream (down_proj
    in Llama-family blocks), out_new = out_old + X ΔWᵀ exactly. That is checked on one sample against a
    real forward pass; any other block structure falls back to a full pass.
    """
    if len(group) != 1 or any(o is None for o in outputs):
        return _propagate(layer, cached)
    (name, module), = group.items()
    delta = module.weight.data.float() - old_weights[name]().float()
    predicted = []
    for (_, kwargs), out, x in zip(cached, outputs, inputs):
        out = layer_output(out)
        if out.shape[-1] != module.out_features:
            return _propagate(layer, cached)
        predicted.append((out + (x @ delta.T).view(out.shape), kwargs))
    hidden, kwargs = cached[0]
    exact = layer_output(layer(hidden[:1], **_slice_batch(kwargs, hidden.shape[0])))
    scale = exact.abs().max().clamp_min(1.0)
    if (exact - predicted[0][0][:1]).abs().max() > 1e-4 * scale:
        return _propagate(layer, cached)
    return predicted


def _prune_group(group: dict, method: str, patterns: dict[str, Pattern], stats, options: dict) -> list[ModuleReport]:
    if method != "sparsegpt":
        return [_prune_module(name, module, method, patterns[name], stats) for name, module in group.items()]
    # SparseGPT rows are independent given the Hessian: prune the group's weights that share a pattern stacked,
    # in one call (one Cholesky factorisation and one pass over the columns instead of one per module).
    by_pattern: dict[Pattern, dict] = {}
    for name, module in group.items():
        by_pattern.setdefault(patterns[name], {})[name] = module
    reports = []
    for pattern, same in by_pattern.items():
        reports += _sparsegpt_stacked(same, pattern, stats.hessian, options)
    order = list(group)
    return sorted(reports, key=lambda r: order.index(r.name))


def _sparsegpt_stacked(group: dict, pattern: Pattern, H: torch.Tensor, options: dict) -> list[ModuleReport]:
    start = time.perf_counter()
    weights = [m.weight.data.float() for m in group.values()]
    stacked = torch.cat(weights) if len(weights) > 1 else weights[0]  # no copy of a lone (down_proj: 235 MB at 8B)
    result = sparsegpt_prune(stacked, H, pattern, row_segments=[m.out_features for m in group.values()], **options)
    seconds = (time.perf_counter() - start) / len(group)
    row_error = row_reconstruction_errors(result.weight - stacked, H)
    row_baseline = row_reconstruction_errors(stacked, H)
    reports, row = [], 0
    for name, module in group.items():
        rows = slice(row, row + module.out_features)
        row += module.out_features
        module.weight.data.copy_(result.weight[rows].to(module.weight.dtype))
        part = PruneResult(result.weight[rows], result.mask[rows], float(row_error[rows].sum()), result.error_kind,
                           result.damping)
        reports.append(_report(name, module, pattern, part, float(row_baseline[rows].sum()), seconds))
    return reports


def _prune_module(name, module, method, pattern, stats) -> ModuleReport:
    start = time.perf_counter()
    weight = module.weight.data
    if method == "magnitude":
        result = magnitude_prune(weight, pattern)
        baseline = float(weight.float().pow(2).sum())
    else:
        rms = stats.input_rms
        result = wanda_prune(weight, rms, pattern)
        baseline = float((weight.float() * rms).pow(2).sum())
    module.weight.data.copy_(result.weight)
    return _report(name, module, pattern, result, baseline, time.perf_counter() - start)


def _report(name, module, pattern, result: PruneResult, baseline: float, seconds: float) -> ModuleReport:
    return ModuleReport(
        name=name,
        shape=list(module.weight.shape),
        pattern=str(pattern),
        zero_fraction=round(zero_fraction(module.weight.data), 6),
        error=result.error,
        relative_error=result.error / baseline if baseline > 0 else 0.0,
        error_kind=result.error_kind,
        damping=result.damping,
        seconds=round(seconds, 4),
    )


def capture_first_layer_inputs(model, layers, windows: torch.Tensor, batch_size: int):
    """[(hidden_states, layer_kwargs)] per batch of windows, as the model hands them to layers[0]."""
    cached = []

    def grab(_module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        cached.append((hidden, kwargs))
        raise StopForward

    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for start in range(0, len(windows), batch_size):
            try:
                model(input_ids=windows[start: start + batch_size], use_cache=False)
            except StopForward:
                pass
    finally:
        handle.remove()
    return cached


def _linear_groups(layer, first_batch, modules: dict[str, torch.nn.Linear]) -> list[dict[str, torch.nn.Linear]]:
    """Group the layer's target Linears by the input tensor they read, in call order."""
    calls: list[tuple[str, torch.Tensor]] = []
    by_id = {id(m): n for n, m in modules.items()}

    def record(module, args):
        # keep the input itself, not its id(): a freed input's address (and so its id) can be reused by the
        # next one, which would merge o_proj into q/k/v's group depending on the allocator
        calls.append((by_id[id(module)], args[0]))

    handles = [m.register_forward_pre_hook(record) for m in modules.values()]
    try:
        hidden, kwargs = first_batch
        layer(hidden[:1], **_slice_batch(kwargs, hidden.shape[0]))
    finally:
        for h in handles:
            h.remove()
    groups: list[dict[str, torch.nn.Linear]] = []
    last_input = None
    for name, tensor in calls:
        if name in {n for g in groups for n in g}:
            continue  # a module called twice keeps its first position
        if tensor is not last_input or not groups:
            groups.append({})
        groups[-1][name] = modules[name]
        last_input = tensor
    missed = [n for n in modules if all(n not in g for g in groups)]
    if missed:  # never called in forward: prune them last, data-free statistics are meaningless
        raise SparsetrtError(f"modules {missed[:3]} are not used in the forward pass; exclude them")
    return groups


def _same_groups(first, modules: dict[str, torch.nn.Linear], index: int):
    """Reuse layer k's grouping for layer `index` when the module names line up (identical blocks)."""
    if first is None:
        return None
    first_index, groups = first
    old, new = f".{first_index}.", f".{index}."
    mapped = [{name.replace(old, new, 1): None for name in g} for g in groups]
    if sorted(n for g in mapped for n in g) != sorted(modules):
        return None
    return [{n: modules[n] for n in g} for g in mapped]


def _slice_batch(kwargs: dict, batch: int) -> dict:
    """First sample of every batched tensor in the layer kwargs (masks); shared ones stay as they are."""
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == batch and batch > 1:
            out[k] = v[:1]
        elif isinstance(v, tuple) and all(isinstance(t, torch.Tensor) for t in v):
            out[k] = tuple(t[:1] if t.ndim > 0 and t.shape[0] == batch and batch > 1 else t for t in v)
        else:
            out[k] = v
    return out


def layer_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def progress_bar(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="layer", disable=not enabled, leave=False)
