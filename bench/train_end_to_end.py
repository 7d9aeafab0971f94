"""Training end to end on a folder of real JPEGs (issue 14): the CLI's training path exactly
as a user runs it, against the torchvision reference loop, and our step-only throughput on
synthetic tensors, in interleaved rounds of one run.

Data: 480 JPEGs of 400x300 pixels (quality 90) in 4 classes, generated once from the two
photographs scikit-learn ships (`sklearn.datasets.load_sample_images`: china.jpg and
flower.jpg, 640x427): random crops of 30-100% of the photo, resized to 400x300; the classes
are (photo) x (upright, upside down), and half of each class is mirrored. Real JPEG decoding
of natural-image content, not a benchmark of the classes' difficulty.

Peers, each a fresh process, steady-state images/s (the first `--skip` steps left out):

- "CLI": `mobilenetv2 train --data DIR --recipe finetune --preset imagenet --batch-size 32
  --max-steps N --log-every 1` (MobileNetV2 1.0 at 224x224, new 4-class network; the recipe's
  augmentation: RandomResizedCrop + flip; every other setting its default: the thread and
  worker budget of `train.budget`, the precision and layout `train.tune` measures). Rates come
  from the per-step `img_s` in its metrics.jsonl (images since the epoch began / seconds).
- "reference": torchvision's references/classification/train.py loop: ImageFolder with
  RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor + Normalize, DataLoader (shuffle,
  batch 32, `--ref-workers` workers: each is its own peer; the best one is the baseline),
  torchvision's mobilenet_v2(num_classes=4), eager NCHW fp32, SGD momentum 0.9, label
  smoothing 0.1, `loss.item()` every step, torch's default threads (all cores). Each
  reference runs twice: as torchvision's script runs (glibc's malloc defaults) and with the
  allocator setting our CLI applies (`train.malloc`, given through `GLIBC_TUNABLES`), so the
  table shows what that setting alone is worth.
- "step only": our training step (`train.engine.train_one_epoch`) on synthetic tensors
  already in memory, with the setup `train.tune` chose: the ceiling the end-to-end path is
  measured against (target: CLI >= 80% of it, and >= 2x the reference).

    python bench/train_end_to_end.py            # 3 rounds of 10 steps (docs/BENCHMARKS.md)
    python bench/train_end_to_end.py --quick    # 1 round of 6 steps: a check of the script
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
BATCH = 32
SIZE = 224


def make_folder(root: Path, n: int = 480, classes: int = 4) -> Path:
    """The JPEG folder (see the module docstring); made once, reused when complete."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    done = root / ".complete"
    if done.exists():
        return root
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(0)
    per = n // classes
    for c in range(classes):
        photo, upside_down = photos[c % 2], c >= 2
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per):
            w, h = photo.size
            frac = rng.uniform(0.3, 1.0)
            cw, ch = int(w * np.sqrt(frac)), int(h * np.sqrt(frac))
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            img = photo.crop((x0, y0, x0 + cw, y0 + ch)).resize((400, 300), Image.BICUBIC)
            if upside_down:
                img = img.transpose(Image.ROTATE_180)
            if i % 2:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            img.save(folder / f"{i:04d}.jpg", quality=90)
    done.touch()
    return root


def steady_rate(stamps: list[tuple[int, float]], skip: int) -> float:
    """Images/s between the end of step `skip` and the last step, from (images, seconds
    since the start) pairs."""
    (n0, t0), (n1, t1) = stamps[skip - 1], stamps[-1]
    return (n1 - n0) / max(1e-9, t1 - t0)


# ---------------------------------------------------------------------------------------------
# Peers (each runs in its own process)


def run_cli(data: Path, steps: int, skip: int, extra: list[str] = ()) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [str(Path(sys.executable).with_name("mobilenetv2")), "train", "--data", str(data),
               "--recipe", "finetune", "--preset", "imagenet", "--batch-size", str(BATCH),
               "--max-steps", str(steps), "--log-every", "1", "--tensorboard", "false",
               "--out", out, *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"CLI failed:\n{proc.stderr[-3000:]}")
        stamps = []
        for line in (Path(out) / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec.get("kind") == "step":
                n = rec["step"] * BATCH
                stamps.append((n, n / rec["img_s"]))
        setup = next((ln.split("step setup: ", 1)[1] for ln in proc.stderr.splitlines()
                      if "step setup: " in ln), "?")
        return {"rate": steady_rate(stamps, skip), "setup": setup}


def run_reference(data: Path, steps: int, skip: int, workers: int) -> dict:
    import torch
    import torch.nn.functional as F
    import torchvision
    from torchvision import transforms as T

    torch.manual_seed(0)
    tf = T.Compose([T.RandomResizedCrop(SIZE), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ds = torchvision.datasets.ImageFolder(str(data), tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True,
                                         num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0)
    model = torchvision.models.mobilenet_v2(num_classes=len(ds.classes)).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-5)
    stamps, n, t0 = [], 0, time.perf_counter()
    while len(stamps) < steps:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
            n += len(x)
            stamps.append((n, time.perf_counter() - t0))
            if len(stamps) == steps:
                break
    return {"rate": steady_rate(stamps, skip), "threads": torch.get_num_threads()}


def run_step_only(steps: int, skip: int) -> dict:
    import torch

    from mobilenetv2 import MobileNetV2, ModelConfig
    from mobilenetv2.config import TrainConfig
    from mobilenetv2.train.budget import available_cores, plan_budget
    from mobilenetv2.train.distributed import DistInfo
    from mobilenetv2.train.engine import StepContext, TrainState, train_one_epoch
    from mobilenetv2.train.malloc import retain_freed_memory
    from mobilenetv2.train.optim import build_optimizer
    from mobilenetv2.train.tune import choose_setup

    torch.set_num_threads(plan_budget(available_cores()).threads)
    retain_freed_memory()  # as the CLI's configure_torch does on a CPU
    torch.manual_seed(0)
    cfg = ModelConfig(width=1.0, num_classes=4, dropout=0.2)
    tc = TrainConfig(lr=0.01, weight_decay=1e-5)
    model = MobileNetV2(cfg)
    setup = choose_setup(tc, torch.device("cpu"), model, SIZE, BATCH).candidate
    model = model.to(memory_format=setup.memory_format)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 256, (BATCH, 3, SIZE, SIZE), dtype=torch.uint8, generator=g),
                torch.randint(0, 4, (BATCH,), generator=g), []) for _ in range(4)]
    from mobilenetv2.data.transforms import BatchNormalize

    opt = build_optimizer(model, tc, 0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    stamps: list[tuple[int, float]] = []
    t0 = time.perf_counter()

    def on_step(st: TrainState, info: dict) -> None:
        stamps.append((st.step * BATCH, time.perf_counter() - t0))

    ctx = StepContext(device=torch.device("cpu"), num_classes=4, amp_dtype=setup.amp_dtype,
                      memory_format=setup.memory_format, label_smoothing=0.1, mixup_alpha=0.0,
                      cutmix_alpha=0.0, grad_accum=1, clip_grad_norm=0.0, seed=0,
                      steps_per_epoch=steps, max_steps=0, dist=DistInfo(), progress=False,
                      normalize=BatchNormalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    train_one_epoch(model, [batches[i % 4] for i in range(steps)], opt, sched,
                    torch.amp.GradScaler("cpu", enabled=False), ctx, TrainState(),
                    on_step=on_step)
    return {"rate": steady_rate(stamps, skip), "setup": setup.name}


def peer(args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run one peer in a fresh process (`--peer ...`) and return its JSON line."""
    proc = subprocess.run([sys.executable, str(HERE), "--peer", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"peer {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    import torch

    from mobilenetv2.runtime.cpu import cpu_has_bf16, cpu_info
    from mobilenetv2.train.budget import available_cores

    info = cpu_info()
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in info.flags]
    return (f"{info.model} ({available_cores()} cores; ISA {'+'.join(isa) or '?'}; "
            f"native bf16 {cpu_has_bf16()}; torch {torch.__version__}, oneDNN capability "
            f"{torch.backends.cpu.get_cpu_capability()})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 round of 6 steps (a check)")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="steps per peer and round")
    p.add_argument("--skip", type=int, default=None, help="warm-up steps left out")
    p.add_argument("--ref-workers", type=int, nargs="+", default=None,
                   help="DataLoader workers of the reference (default: 1; the previous "
                   "table's 0 workers ran 6%% slower)")
    p.add_argument("--data-dir", type=Path,
                   default=Path(os.environ.get("MOBILENETV2_CACHE", "~/.cache/mobilenetv2"))
                   .expanduser() / "bench" / "jpeg480")
    p.add_argument("--cli-variants", nargs="+", default=[], metavar="ARGS",
                   help='more CLI peers, each with these extra options, e.g. '
                   '"--num-workers 1 --threads 2" (the loader/thread budget)')
    p.add_argument("--no-reference", action="store_true", help="leave the reference out")
    p.add_argument("--peer", nargs="+", help=argparse.SUPPRESS)
    args, extra = p.parse_known_args(argv)
    if extra and not args.peer:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    rounds = args.rounds or (1 if args.quick else 3)
    steps = args.steps or (6 if args.quick else 10)
    skip = args.skip or (2 if args.quick else 3)
    if args.peer:
        kind, data = args.peer[0], Path(args.peer[1])
        if kind == "reference":
            out = run_reference(data, steps, skip, int(args.peer[2]))
        elif kind == "steponly":
            out = run_step_only(steps, skip)
        else:
            out = run_cli(data, steps, skip, extra)
        print(json.dumps(out))
        return 0
    from mobilenetv2.train.malloc import TUNABLES

    data = make_folder(args.data_dir)
    ref_workers = args.ref_workers if args.ref_workers is not None else [0] if args.quick \
        else [1]
    common = ["--steps", str(steps), "--skip", str(skip)]
    # Warm the tuning cache once, outside the timed rounds (a first run measures candidates).
    peer(["steponly", str(data), *common])
    results: dict[str, list[float]] = {}
    notes: dict[str, str] = {}
    variants = {f"cli{i + 1}": v.split() for i, v in enumerate(args.cli_variants)}
    names = ["cli", *variants, "steponly",
             *([] if args.no_reference else (f"ref{w}{m}" for w in ref_workers
                                             for m in ("", "m")))]
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            if name in variants:
                res = peer(["cli", str(data), *common, *variants[name]])
                notes[name] = res.get("setup", "")
            elif name.startswith("ref"):
                workers, tuned = name[3:].rstrip("m"), name.endswith("m")
                res = peer(["reference", str(data), workers, *common],
                           env={"GLIBC_TUNABLES": TUNABLES} if tuned else None)
                notes[name] = (f"{res['threads']} threads, {workers} loader workers"
                               + (f", `GLIBC_TUNABLES={TUNABLES}`" if tuned else ""))
            else:
                res = peer([name, str(data), *common])
                notes[name] = res.get("setup", "")
            results.setdefault(name, []).append(res["rate"])
            print(f"round {r + 1} {name}: {res['rate']:.1f} img/s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in results.items()}
    # The baseline: the reference as torchvision's script runs; the last column compares
    # with the reference given our allocator setting too.
    best_ref = max((k for k in med if k.startswith("ref") and not k.endswith("m")),
                   key=med.get, default="steponly")
    best_tuned = max((k for k in med if k.startswith("ref") and k.endswith("m")),
                     key=med.get, default=best_ref)
    lines = [
        f"CPU: {machine()}",
        f"Data: {sum(1 for _ in data.rglob('*.jpg'))} JPEGs 400x300 in 4 classes "
        f"(scikit-learn's two sample photos, cropped/flipped), 224x224, batch {BATCH}; "
        f"{rounds} interleaved round(s) of {steps} steps, first {skip} left out; medians.",
        "",
        "| path | setup | img/s (median) | per round | vs reference | vs step only "
        "| vs reference with our allocator |",
        "|---|---|---|---|---|---|---|",
    ]
    label = {"cli": "CLI `mobilenetv2 train --recipe finetune --preset imagenet`",
             "steponly": "our step only (synthetic uint8 tensors in memory)"}
    for k in names:
        lab = label.get(k, f"CLI + `{' '.join(variants[k])}`" if k in variants
                        else f"torchvision reference, {k[3:].rstrip('m')} workers"
                        + (", our allocator setting" if k.endswith("m") else ""))
        lines.append(f"| {lab} | {notes[k]} | {med[k]:.1f} | "
                     f"{', '.join(f'{v:.1f}' for v in results[k])} | "
                     f"{med[k] / med[best_ref]:.2f}x | {med[k] / med['steponly']:.0%} | "
                     f"{med[k] / med[best_tuned]:.2f}x |")
    text = "\n".join(lines)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
