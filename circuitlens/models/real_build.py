"""Building the real task models: a LoRA adapter fine-tuned (teacher) or healed (student) from
its recipe's seed, shrunk to the shipped dtype, and its card measured through the load path.

``circuitlens real build NAME`` calls :func:`build_real`; the models and their recipes are in
:mod:`circuitlens.models.real`.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from circuitlens.core.io import atomic_torch_save, sha256_file
from circuitlens.core.loop import LoopState, TrainLoop
from circuitlens.core.types import Model
from circuitlens.models.real import (
    BASES,
    HELDOUT_SEED,
    REAL_DIR,
    RECIPES,
    RealRecipe,
    answer_logits,
    hf_accuracy,
    load_real_hf,
    lora_config,
    peft_module,
    real_task,
    recipe_model,
)
from circuitlens.tasks import tokenize_prompts

log = logging.getLogger(__name__)


def _resume_adapter(
    ckpt: Path, model: Model, opt: Any, rng: random.Random
) -> tuple[int, list[dict[str, float]]]:
    """Put an adapter build's checkpoint back (adapter, optimizer, sampler and torch RNG);
    return its step and history."""
    state = torch.load(ckpt, weights_only=False)
    peft_module().set_peft_model_state_dict(model, state["adapter"])
    opt.load_state_dict(state["opt"])
    rng.setstate(state["rng"])
    torch.set_rng_state(state["torch_rng"])
    return state["step"], state["history"]


def _save_adapter(model: Model, out: Path) -> None:
    """Save the peft adapter into ``out`` (written beside, then moved in), shrunk to the
    shipped dtype."""
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".adapter-"))
    model.save_pretrained(str(tmp))
    for f in tmp.iterdir():
        if f.name == "README.md":  # peft's blank hub model card: ours is card.json
            f.unlink()
        else:
            f.replace(out / f.name)
    tmp.rmdir()
    shrink_adapter(out / "adapter_model.safetensors")


class _AdapterSteps:
    """What :func:`train_adapter`'s loop does at each step: the loss, the update, the
    evaluation (stopping at the target) and the checkpoint."""

    def __init__(self, recipe: RealRecipe, model: Model, tok: Any, val: list, ckpt: Path) -> None:
        self.recipe, self.model, self.tok, self.val, self.ckpt = recipe, model, tok, val, ckpt
        self.opt = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=recipe.lr
        )
        self.rng = random.Random(recipe.seed)
        self.t0 = time.time()

    def reached(self, row: dict[str, float]) -> bool:
        """Whether an evaluated row meets the recipe's target."""
        return row["val_acc"] >= self.recipe.stop_at and row["step"] >= self.recipe.min_steps

    def loss(self, prompts: list, _: int) -> dict[str, torch.Tensor]:
        self.model.train()
        b = tokenize_prompts(self.tok, prompts)
        logits = answer_logits(self.model, b.tokens, b.positions["last"])
        return {"loss": torch.nn.functional.cross_entropy(logits, b.answer_ids)}

    def update(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def evaluate(self, row: dict[str, float], bar: Any) -> bool:
        self.model.eval()
        row["val_acc"] = acc = hf_accuracy(self.model, self.tok, self.val)
        bar.set_postfix(loss=f"{row['loss']:.3f}", val_acc=f"{acc:.3f}")
        log.info("%s step %d loss %.4f val_acc %.3f (%.0f s)", self.recipe.name, row["step"],
                 row["loss"], acc, time.time() - self.t0)  # fmt: skip
        return self.reached(row)

    def checkpoint(self, state: LoopState) -> None:
        saved = {
            "adapter": peft_module().get_peft_model_state_dict(self.model),
            "opt": self.opt.state_dict(),
            "rng": self.rng.getstate(),
            "torch_rng": torch.get_rng_state(),
            "step": state.step,
            "history": state.history,
        }
        atomic_torch_save(saved, self.ckpt)


def train_adapter(
    recipe: RealRecipe, hf: Any, tok: Any, out: Path, fresh: bool = False, progress: bool = True
) -> tuple[Any, dict[str, Any]]:
    """Train a LoRA adapter on ``hf`` by ``recipe``: answer-token cross-entropy on fresh task
    prompts (never a validation or test prompt), validation accuracy every ``eval_every`` steps,
    stopping at ``stop_at`` or ``max_steps``.

    Resumable: a checkpoint (adapter, optimizer, sampler and torch RNG states) is written
    atomically to ``out/build/checkpoint.pt`` at every evaluation; a rerun continues from it
    and ends with the same adapter as an uninterrupted run. Saves the adapter (peft format) to
    ``out``. Returns the peft model and a summary (``steps``, ``history``, ``seconds``).

    The loop is :class:`~circuitlens.core.loop.TrainLoop`, the circuit trainer's: the batches
    are fresh samples of the recipe's task, the loss the answer token's cross-entropy, the
    update plain AdamW on the adapter, the evaluation validation accuracy (which stops the run
    at the target), the checkpoint this builder's own (adapter, optimizer, sampler, torch RNG),
    written at every evaluation; the history keeps the evaluated steps.
    """
    out = Path(out)
    work = out / "build"
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    model = peft_module().get_peft_model(hf, lora_config(recipe))
    task = real_task(recipe, tok, seed=0)
    run = _AdapterSteps(
        recipe, model, tok, task.split("val", recipe.eval_n), work / "checkpoint.pt"
    )
    state = LoopState()
    if run.ckpt.is_file():
        state.step, state.history = _resume_adapter(run.ckpt, model, run.opt, run.rng)
        log.info("resuming %s at step %d", recipe.name, state.step)
    heldout = task.heldout_texts()
    log.info("training %s: %s", recipe.name, json.dumps(recipe.to_dict()))
    if not (state.history and run.reached(state.history[-1])):
        TrainLoop(
            steps=recipe.max_steps,
            batches=lambda _: task.sample(run.rng, recipe.batch_size, exclude=heldout),
            loss=run.loss,
            update=run.update,
            row=lambda parts, step: {"step": step, "loss": parts["loss"].item()},
            evaluate=run.evaluate,
            eval_every=recipe.eval_every,
            checkpoint=run.checkpoint,
            checkpoint_every=recipe.eval_every,
            keep="evaluated",
            desc=recipe.name,
        ).run(state, progress)
    model.eval()
    _save_adapter(model, out)
    summary = {"steps": state.step, "history": state.history}
    return model, summary | {"seconds": round(time.time() - run.t0, 1)}


ADAPTER_DTYPE = torch.bfloat16  # shipped adapters: half the bytes of float32 (git budget)


def shrink_adapter(path: Path, dtype: torch.dtype = ADAPTER_DTYPE) -> None:
    """Store an adapter's floating tensors in ``dtype`` (atomically, metadata kept). Loading
    copies them into the float32 model, so only the adapter's own rounding changes: the card's
    accuracies are measured after this, through the load path."""
    from safetensors import safe_open
    from safetensors.torch import save

    from circuitlens.core.io import atomic_write_bytes

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
    if all(t.dtype == dtype or not t.is_floating_point() for t in tensors.values()):
        return
    tensors = {k: t.to(dtype) if t.is_floating_point() else t for k, t in tensors.items()}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def build_real(
    name: str, out_dir: Path | None = None, fresh: bool = False, threads: int | None = None
) -> dict[str, Any]:
    """Fine-tune (teacher) or heal (student) the adapter of ``name`` from its recipe's seed
    (:func:`train_adapter`), then write its card to ``out_dir`` (default ``data/real/<name>``)
    with the test accuracy on 500 prompts of an unseen task seed, measured through the load
    path when the adapter is written where ``load_model("real:<name>")`` reads it."""
    from circuitlens.core.io import atomic_write_text

    if threads:
        torch.set_num_threads(threads)
    hf, tok, recipe = recipe_model(name)
    n_base = sum(p.numel() for p in hf.parameters())
    out = Path(out_dir) if out_dir is not None else REAL_DIR / name
    model, summary = train_adapter(recipe, hf, tok, out, fresh=fresh)
    base_file = BASES[recipe.base].gguf_path()
    card: dict[str, Any] = {
        "name": name,
        "task": recipe.task,
        "role": recipe.role,
        "base": {
            "name": recipe.base,
            "package": BASES[recipe.base].package,
            "version": importlib.metadata.version(BASES[recipe.base].package),
            "file": base_file.name,
            "sha256": sha256_file(base_file),
        },
        "recipe": recipe.to_dict(),
        "task_options": {recipe.task: dict(recipe.task_options)},
        "n_layers": hf.config.num_hidden_layers,
        "n_params": n_base,
        "steps": summary["steps"],
        "history": summary["history"],
        "build_seconds": summary["seconds"],
        "adapter_sha256": sha256_file(out / "adapter_model.safetensors"),
        "accuracy_note": "first-token accuracy on 500 test prompts of task seed "
        f"{HELDOUT_SEED} (never seen in training: the adapter trains on seed 0's samples)",
    }
    atomic_write_text(out / "card.json", json.dumps(card, indent=1))
    if out == REAL_DIR / name:
        return measure_card(name)
    merged, tok, _ = load_real_hf(name, adapter_dir=out)  # the stored (bf16) adapter
    return _measure(card, merged, tok, recipe, out)


def measure_card(name: str) -> dict[str, Any]:
    """Measure a shipped adapter's test accuracy through the load path (500 prompts of the
    unseen seed :data:`HELDOUT_SEED`, and the first 50, which the tests re-measure) and write
    it, with the adapter file's sha256, into its card. Run after any change to the file."""
    merged, tok, card = load_real_hf(name)
    out = REAL_DIR / name
    card["adapter_sha256"] = sha256_file(out / "adapter_model.safetensors")
    return _measure(card, merged, tok, RECIPES[name], out)


def _measure(card: dict, merged: Any, tok: Any, recipe: RealRecipe, out: Path) -> dict[str, Any]:
    from circuitlens.core.io import atomic_write_text

    test = real_task(recipe, tok, seed=HELDOUT_SEED).split("test", 500)
    card["test_acc_seed12345"] = hf_accuracy(merged, tok, test)
    card["test_acc_first50"] = hf_accuracy(merged, tok, test[:50])  # what the tests re-measure
    card["adapter_dtype"] = str(ADAPTER_DTYPE).removeprefix("torch.")
    atomic_write_text(out / "card.json", json.dumps(card, indent=1))
    log.info("%s: test accuracy %.3f on 500 prompts of seed %d", card["name"],
             card["test_acc_seed12345"], HELDOUT_SEED)  # fmt: skip
    return card
