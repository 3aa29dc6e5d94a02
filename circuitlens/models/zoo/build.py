"""Training a zoo model from its recipe, and saving it with its card (``circuitlens zoo train``).

Recipe (what made the plateau of entity tracking finite; see docs and ZOO_NOTES):
- dense supervision: each training sequence holds one context and several queries drawn with
  replacement, each answer scored, so elimination cannot solve later queries;
- a box-count curriculum: every batch draws its number of boxes from ``min_boxes..max_boxes``;
- auxiliary linear probes, discarded after training, that ask an early layer for the moves the
  task composes (entity tracking: the object at its box label and the queried label at the
  query's last token; theory of mind: the queried container at the answer position, and for
  the teacher the questioned character there too). They are dense signals that end the
  plateau; the shipped model is a plain Llama.
- supervised attention heads (entity tracking: the query's end to the queried label; theory of
  mind: the answer slot to the container's drink and filler, and for the teacher a binding head
  to the questioned character's own "<name> grabs").
- AdamW with warm-up and cosine decay; the checkpoint with the best validation accuracy is kept;
  students stop at the first evaluation that reaches ``stop_at`` (the warm-student target).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from circuitlens.core.io import atomic_torch_save, atomic_write_text, sha256_file
from circuitlens.core.types import Model
from circuitlens.models.zoo.batches import training_batch
from circuitlens.models.zoo.spec import CARD_SEED, ZOO, ZOO_DIR, ZooArch, ZooError, ZooSpec
from circuitlens.models.zoo.tokenizer import SPECIALS, build_tokenizer
from circuitlens.tasks import get_task
from circuitlens.tasks.base import Task

log = logging.getLogger(__name__)


def build_model(arch: ZooArch, vocab_size: int, seed: int) -> Any:
    """A freshly initialised tiny ``LlamaForCausalLM`` (deterministic from ``seed``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=arch.d_model,
        intermediate_size=arch.d_mlp,
        num_hidden_layers=arch.n_layers,
        num_attention_heads=arch.n_heads,
        num_key_value_heads=arch.n_kv_heads,
        max_position_embeddings=arch.max_pos,
        bos_token_id=SPECIALS.index("<bos>"),
        eos_token_id=SPECIALS.index("<eos>"),
        pad_token_id=SPECIALS.index("<pad>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def heldout_accuracy(model: Model, tokenizer: Any, task: Task, split: str, n: int | None) -> float:
    """First-token accuracy of a Hugging Face model on single-query held-out prompts."""
    from circuitlens.tasks.metrics import evaluate

    was_training = model.training
    model.eval()
    try:
        return evaluate(model, task, split=split, n=n, tokenizer=tokenizer)
    finally:
        model.train(was_training)


def _eval_task(spec: ZooSpec, seed: int, n_val: int = 200, n_test: int = 500) -> Task:
    opts = dict(spec.task_options)
    if spec.task == "entity_tracking":
        opts.setdefault("n_boxes", 7)
    return get_task(spec.task, seed=seed, n_train=0, n_val=n_val, n_test=n_test, **opts)


@dataclasses.dataclass
class _ZooRun:
    """One zoo model's training: the model, its probes, the optimiser and schedule, the
    batch stream's rng and the run's state (step, history, best val accuracy, wall time)."""

    name: str
    spec: ZooSpec
    model: Model
    probe: nn.Linear
    probe2: nn.Linear
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    sched: Any
    rng: random.Random
    state: dict[str, Any]

    def checkpoint(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "probe": self.probe.state_dict(),
            "probe2": self.probe2.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "rng": self.rng.getstate(),
            "torch_rng": torch.get_rng_state(),
            "state": self.state,
        }

    def resume(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.probe.load_state_dict(saved["probe"])
        if "probe2" in saved:
            self.probe2.load_state_dict(saved["probe2"])
        self.opt.load_state_dict(saved["opt"])
        self.sched.load_state_dict(saved["sched"])
        self.rng.setstate(saved["rng"])
        torch.set_rng_state(saved["torch_rng"])
        self.state = saved["state"]
        log.info("resumed %s at step %d", self.name, self.state["step"])

    def continue_shipped(self, best_path: Path) -> None:
        """Start from the shipped weights at the step their card records."""
        from safetensors.torch import load_file

        shipped = ZOO_DIR / self.name
        card = json.loads((shipped / "card.json").read_text())
        self.model.load_state_dict(load_file(shipped / "model.safetensors"))
        self.state.update(
            step=card["steps_trained"],
            history=list(card["learning_curve"]),
            best=card["val_accuracy_best"],
            best_step=card["kept_step"],
            wall=card["wall_time_s"],
        )
        atomic_torch_save(self.model.state_dict(), best_path)
        with warnings.catch_warnings():  # moving the schedule to the step reached, not a bug
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(self.state["step"]):
                self.sched.step()
        log.info("continuing the shipped %s from step %d", self.name, self.state["step"])


def _new_run(name: str, spec: ZooSpec, tokenizer: Any) -> _ZooRun:
    """A fresh model (the recipe's seed), probes, AdamW with warmup then cosine decay."""
    r = spec.recipe
    model = build_model(spec.arch, len(tokenizer), r.seed)
    # attention weights are only returned by the eager implementation
    if r.attn_weight > 0 or r.tom_bind_weight > 0:
        model.config._attn_implementation = "eager"
    probe = nn.Linear(spec.arch.d_model, len(tokenizer), bias=False)
    probe2 = nn.Linear(spec.arch.d_model, len(tokenizer), bias=False)
    params = list(model.parameters()) + list(probe.parameters())
    # the second probe is kept out otherwise, so earlier recipes keep their exact numerics
    if r.tom_probe_knows or r.tom_probe_cq:
        params += list(probe2.parameters())
    opt = torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < r.warmup:
            return (step + 1) / r.warmup
        frac = (step - r.warmup) / max(1, r.steps - r.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = random.Random(f"zoo:{name}:{r.seed}")
    state: dict[str, Any] = {"step": 0, "history": [], "best": -1.0, "best_step": 0, "wall": 0.0}
    return _ZooRun(name, spec, model, probe, probe2, params, opt, sched, rng, state)


def _losses(run: _ZooRun, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's next-token loss and the recipe's auxiliary loss (probes of the hidden
    states, attention targets)."""
    r = run.spec.recipe
    use_bind = r.tom_bind_weight > 0 and len(batch["bind_rows"]) > 0
    use_attn = r.attn_weight > 0 and len(batch["attn_rows"]) > 0
    out_ = run.model(
        input_ids=batch["input_ids"],
        labels=batch["labels"],
        output_hidden_states=r.aux_weight > 0,
        output_attentions=use_attn or use_bind,
    )
    aux_loss = torch.zeros(())
    if r.aux_weight > 0:
        h = out_.hidden_states[r.aux_layer][batch["aux_rows"], batch["aux_pos"]]
        aux_loss = nn.functional.cross_entropy(run.probe(h), batch["aux_tgt"])
        if len(batch["aux2_rows"]):
            h2 = out_.hidden_states[r.aux2_layer][batch["aux2_rows"], batch["aux2_pos"]]
            aux_loss = aux_loss + nn.functional.cross_entropy(run.probe2(h2), batch["aux2_tgt"])
    if use_attn:
        rows, q, k = batch["attn_rows"], batch["attn_q"], batch["attn_k"]
        att = out_.attentions[r.attn_layer][rows, batch["attn_h"], q, k]
        aux_loss = aux_loss - r.attn_weight * (att + 1e-6).log().mean()
    if use_bind:
        rows, q, k = batch["bind_rows"], batch["bind_q"], batch["bind_k"]
        att = out_.attentions[r.tom_bind_layer][rows, r.tom_bind_head, q, k]
        aux_loss = aux_loss - r.tom_bind_weight * (att + 1e-6).log().mean()
    return out_.loss, aux_loss


def _evaluate(
    run: _ZooRun, tokenizer: Any, val_task: Task, losses: tuple[torch.Tensor, torch.Tensor],
    wall: float, bar: Any, best_path: Path,
) -> bool:  # fmt: skip
    """Validation accuracy into the history; the best weights kept. True: the stop target
    is reached."""
    r, state = run.spec.recipe, run.state
    loss, aux_loss = losses
    acc = heldout_accuracy(run.model, tokenizer, val_task, "val", r.eval_n)
    state["wall"] = wall
    state["history"].append(
        {
            "step": state["step"],
            "loss": round(loss.item(), 4),
            "aux_loss": round(aux_loss.item(), 4),
            "val_acc": acc,
            "wall_s": round(state["wall"], 1),
        }
    )
    bar.set_postfix(loss=f"{loss.item():.3f}", aux=f"{aux_loss.item():.3f}", val=f"{acc:.3f}")
    log.info(
        "%s step %d loss %.4f aux %.4f val_acc %.3f",
        run.name, state["step"], float(loss), float(aux_loss), acc,
    )  # fmt: skip
    if acc > state["best"]:
        state["best"], state["best_step"] = acc, state["step"]
        atomic_torch_save(run.model.state_dict(), best_path)
    return acc >= r.stop_at


def train(
    name: str,
    out_dir: Path | str | None = None,
    work_dir: Path | str | None = None,
    steps: int | None = None,
    resume: bool = True,
    progress: bool = True,
    continue_shipped: bool = False,
) -> dict[str, Any]:
    """Train zoo model ``name`` from scratch (or resume), save it and its card; return the card.

    ``continue_shipped=True`` starts from the shipped weights in ``data/zoo/<name>`` at the
    step their card records (a fresh optimizer and probe), to train a model further.

    This loop is not :class:`~circuitlens.core.loop.TrainLoop` (which the circuit trainer and
    the real adapter builder run on): its resumable state is the shipped cards' own (the best
    step and its weights, the wall time, the learning curve in the card's format) and it moves
    a warmup-cosine schedule to the step reached when it continues a shipped model. The
    shipped zoo models are what every test and benchmark runs on, so moving this loop means
    rebuilding them all and re-proving them bit for bit, for nothing a user would notice.

    Args:
        name: a key of :data:`ZOO`.
        out_dir: where the finished model goes (default ``data/zoo/<name>``).
        work_dir: checkpoints for resuming (default ``runs/zoo/<name>``).
        steps: override the recipe's step budget (the card records it).
        resume: continue from the checkpoint in ``work_dir`` if there is one.
    """
    from tqdm.auto import tqdm

    if name not in ZOO:
        raise ZooError(f"unknown zoo model {name!r}; the zoo holds: {', '.join(ZOO)}")
    spec = ZOO[name]
    if steps is not None:
        spec = dataclasses.replace(spec, recipe=dataclasses.replace(spec.recipe, steps=steps))
    r = spec.recipe
    out = Path(out_dir) if out_dir is not None else ZOO_DIR / name
    work = Path(work_dir) if work_dir is not None else Path("runs") / "zoo" / name
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    run = _new_run(name, spec, tokenizer)
    val_task = _eval_task(spec, seed=0)
    ckpt, best_path = work / "checkpoint.pt", work / "best.pt"
    if resume and ckpt.exists():
        run.resume(torch.load(ckpt, weights_only=False))
    elif continue_shipped:
        run.continue_shipped(best_path)
    run.model.train()
    t0 = time.time() - run.state["wall"]
    bar = tqdm(total=r.steps, initial=run.state["step"], desc=f"zoo train {name}",
               disable=not progress)  # fmt: skip
    stop = False
    while run.state["step"] < r.steps and not stop:
        batch = training_batch(spec, tokenizer, run.rng, run.state["step"])
        loss, aux_loss = _losses(run, batch)
        run.opt.zero_grad(set_to_none=True)
        (loss + r.aux_weight * aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(run.params, 1.0)
        run.opt.step()
        run.sched.step()
        run.state["step"] += 1
        bar.update(1)
        if run.state["step"] % r.eval_every == 0 or run.state["step"] == r.steps:
            wall = time.time() - t0
            stop = _evaluate(run, tokenizer, val_task, (loss, aux_loss), wall, bar, best_path)
            atomic_torch_save(run.checkpoint(), ckpt)
    bar.close()
    # a student ships the checkpoint that reached the warm target; a teacher its best one
    run.model.load_state_dict(
        torch.load(best_path, weights_only=True)
        if spec.role == "teacher" or not stop
        else run.model.state_dict()
    )
    return save_zoo_model(spec, run.model, tokenizer, out, run.state)


def save_zoo_model(
    spec: ZooSpec, model: Model, tokenizer: Any, out: Path, state: dict[str, Any]
) -> dict[str, Any]:
    """Save weights, tokenizer and a model card (accuracy measured on a fresh task seed)."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    card_task = _eval_task(spec, seed=CARD_SEED)
    test_acc = heldout_accuracy(model, tokenizer, card_task, "test", None)
    card = {
        "name": spec.name,
        "task": spec.task,
        "role": spec.role,
        "architecture": {
            "class": "LlamaForCausalLM",
            **dataclasses.asdict(spec.arch),
            "vocab_size": len(tokenizer),
            "n_params": sum(p.numel() for p in model.parameters()),
        },
        "recipe": dataclasses.asdict(spec.recipe),
        "task_options": spec.task_options,
        "steps_trained": state["step"],
        "kept_step": state["best_step"] if spec.role == "teacher" else state["step"],
        "wall_time_s": round(state["wall"], 1),
        "val_accuracy_best": state["best"],
        "accuracy": {
            "split": "test",
            "task_seed": CARD_SEED,
            "n": len(card_task.split("test")),
            "first_token_accuracy": test_acc,
        },
        "learning_curve": state["history"],
        "sha256": {"model.safetensors": sha256_file(out / "model.safetensors")},
        "notes": "Trained by `circuitlens zoo train`; recipe in circuitlens/models/zoo/spec.py.",
    }
    atomic_write_text(out / "card.json", json.dumps(card, indent=1))
    log.info("saved %s: test accuracy %.3f", spec.name, test_acc)
    return card
