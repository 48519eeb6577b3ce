"""The CPU avatar renderer's cost per frame, without Triton or WebRTC.

    python -m bench.avatar_render [--models-dir DIR] [--avatar astronaut] [--out DIR]

Prints the time to make each warped patch the first time (mouth levels x widths,
eyelid levels), then the steady per-frame cost of a speaking track (patches cached),
and with --out writes a silent frame, the widest open mouth and a blink as PNGs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from pipelines.avatar import FPS, LEVELS, LID_LEVELS, WIDTHS, Avatar, eyelid, write_png


def main(argv: list[str] | None = None) -> int:
    from streaming.settings import Settings

    p = argparse.ArgumentParser(prog="python -m bench.avatar_render")
    p.add_argument("--models-dir", type=Path, default=None)
    p.add_argument("--avatar", default="astronaut")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    root = args.models_dir or Settings.from_env().models_dir
    avatar = Avatar.load(root / "avatar" / args.avatar)
    t0 = time.perf_counter()
    for w in range(len(WIDTHS)):
        for level in range(LEVELS):
            avatar._mouth_patch(level, w)
    for level in range(1, LID_LEVELS):
        avatar._lid_patches(level)
    n_patches = len(WIDTHS) * LEVELS + LID_LEVELS - 1
    cold = (time.perf_counter() - t0) / n_patches
    rng = np.random.default_rng(0)
    track = [(float(o), int(w)) for o, w in zip(rng.random(2500), rng.integers(0, 3, 2500),
                                                strict=True)]
    t0 = time.perf_counter()
    for i, (o, w) in enumerate(track):
        avatar.frame(i / FPS, o, w)
    per_frame = (time.perf_counter() - t0) / len(track)
    print(f"avatar {args.avatar}: {avatar.w}x{avatar.h}, {n_patches} warped patches, "
          f"{cold * 1000:.1f} ms each the first time; then {per_frame * 1000:.3f} ms a frame "
          f"({len(track)} frames of random visemes and blinks)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        blink = next(i / FPS for i in range(FPS * 10) if eyelid(i / FPS) == 1.0)
        write_png(args.out / "avatar_silent.png", avatar.frame(1.0))
        write_png(args.out / "avatar_open.png", avatar.frame(1.0, 1.0))
        write_png(args.out / "avatar_blink.png", avatar.frame(blink))
        print(f"frames written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
