"""Wav2Lip (Prajwal et al., 2020) lip sync: the network, its checkpoint format and its
audio features, so the published checkpoints in ``avatar/wav2lip/`` drive the avatar.

Checkpoint: ``torch.save({"state_dict": ..., "optimizer": ..., "global_step": ...,
"global_epoch": ...})`` as the original training code writes it, keys prefixed
``module.`` when trained under DataParallel. Input: a 96x96 face (BGR, as the
original was trained with OpenCV) whose lower half is masked, stacked with the
unmasked reference (6 channels), and 80x16 mel windows (0.2 s) per video frame at
25 fps. Output: the 96x96 face with the mouth for that audio.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

# Audio features as the original preprocessing computes them.
SR, N_FFT, HOP, WIN, N_MELS, FMIN, FMAX = 16000, 800, 200, 800, 80, 55.0, 7600.0
MEL_STEP = 16  # mel frames per video frame window
FACE = 96


class Conv2d(nn.Module):
    def __init__(self, cin, cout, kernel_size, stride, padding, residual=False):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding),
                                        nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x):
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class Conv2dTranspose(nn.Module):
    def __init__(self, cin, cout, kernel_size, stride, padding, output_padding=0):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding),
            nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv_block(x))


def _res(c: int) -> Conv2d:
    return Conv2d(c, c, 3, 1, 1, residual=True)


class Wav2Lip(nn.Module):
    """The generator; module names match the published checkpoints."""

    def __init__(self):
        super().__init__()
        S = nn.Sequential
        self.face_encoder_blocks = nn.ModuleList([
            S(Conv2d(6, 16, 7, 1, 3)),                                   # 96
            S(Conv2d(16, 32, 3, 2, 1), _res(32), _res(32)),              # 48
            S(Conv2d(32, 64, 3, 2, 1), _res(64), _res(64), _res(64)),    # 24
            S(Conv2d(64, 128, 3, 2, 1), _res(128), _res(128)),           # 12
            S(Conv2d(128, 256, 3, 2, 1), _res(256), _res(256)),          # 6
            S(Conv2d(256, 512, 3, 2, 1), _res(512)),                     # 3
            S(Conv2d(512, 512, 3, 1, 0), Conv2d(512, 512, 1, 1, 0)),     # 1
        ])
        self.audio_encoder = S(
            Conv2d(1, 32, 3, 1, 1), _res(32), _res(32),
            Conv2d(32, 64, 3, (3, 1), 1), _res(64), _res(64),
            Conv2d(64, 128, 3, 3, 1), _res(128), _res(128),
            Conv2d(128, 256, 3, (3, 2), 1), _res(256),
            Conv2d(256, 512, 3, 1, 0), Conv2d(512, 512, 1, 1, 0),
        )
        self.face_decoder_blocks = nn.ModuleList([
            S(Conv2d(512, 512, 1, 1, 0)),
            S(Conv2dTranspose(1024, 512, 3, 1, 0), _res(512)),
            S(Conv2dTranspose(1024, 512, 3, 2, 1, output_padding=1), _res(512), _res(512)),
            S(Conv2dTranspose(768, 384, 3, 2, 1, output_padding=1), _res(384), _res(384)),
            S(Conv2dTranspose(512, 256, 3, 2, 1, output_padding=1), _res(256), _res(256)),
            S(Conv2dTranspose(320, 128, 3, 2, 1, output_padding=1), _res(128), _res(128)),
            S(Conv2dTranspose(160, 64, 3, 2, 1, output_padding=1), _res(64), _res(64)),
        ])
        self.output_block = S(Conv2d(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def forward(self, mels: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """mels (B, 1, 80, 16), faces (B, 6, 96, 96) in 0..1 -> (B, 3, 96, 96)."""
        x = self.audio_encoder(mels)
        feats = []
        f = faces
        for block in self.face_encoder_blocks:
            f = block(f)
            feats.append(f)
        for block in self.face_decoder_blocks:
            x = block(x)
            x = torch.cat((x, feats.pop()), dim=1)
        return self.output_block(x)


def load_checkpoint(path: Path, device: str = "cpu") -> Wav2Lip:
    try:
        ckpt = torch.load(str(path), map_location=device, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a Wav2Lip checkpoint torch can load: {exc}") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: no state_dict in the checkpoint")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = Wav2Lip()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match the Wav2Lip generator: "
                         f"{len(missing)} missing, {len(unexpected)} unexpected keys "
                         f"(e.g. {(missing or unexpected)[:3]}); is it the SyncNet "
                         "discriminator?")
    return model.to(device).eval()


# -- audio features ---------------------------------------------------------------------
def _hz_to_mel(f):
    f = np.asanyarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    log_t = f >= 1000.0
    return np.where(log_t, 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) / (np.log(6.4) / 27.0),
                    lin)


def _mel_to_hz(m):
    m = np.asanyarray(m, dtype=np.float64)
    lin = m * (200.0 / 3)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), lin)


def mel_basis() -> np.ndarray:
    """Slaney-style mel filterbank (librosa's default), 80 x (n_fft/2 + 1)."""
    freqs = np.linspace(0, SR / 2, N_FFT // 2 + 1)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(FMIN), _hz_to_mel(FMAX), N_MELS + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:N_MELS + 2] - mel_f[:N_MELS]))[:, None]
    return weights.astype(np.float32)


_MEL = None


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """Normalised log-mel (80 x frames), pre-emphasis 0.97, range [-4, 4]."""
    global _MEL
    if _MEL is None:
        _MEL = mel_basis()
    x = np.append(wav[0], wav[1:] - 0.97 * wav[:-1]).astype(np.float32)
    x = np.pad(x, N_FFT // 2, mode="reflect")  # centred frames
    n = 1 + (x.size - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(WIN + 1)[:-1], axis=1)).T
    db = 20 * np.log10(np.maximum(1e-5, _MEL @ spec)) - 20.0
    return np.clip(8.0 * ((db + 100.0) / 100.0) - 4.0, -4.0, 4.0).astype(np.float32)


def mel_windows(mel: np.ndarray, n_frames: int, fps: int = 25) -> np.ndarray:
    """One 80x16 window per video frame (the original's 80/fps mel frames per frame)."""
    step = 80.0 / fps
    out = np.empty((n_frames, N_MELS, MEL_STEP), np.float32)
    for i in range(n_frames):
        start = int(i * step)
        window = mel[:, start:start + MEL_STEP]
        if window.shape[1] < MEL_STEP:
            window = np.pad(window, ((0, 0), (0, MEL_STEP - window.shape[1])), mode="edge")
        out[i] = window
    return out


class Wav2LipRenderer:
    """Frames of an ``Avatar`` whose face is redrawn by Wav2Lip for the audio."""

    def __init__(self, checkpoint: Path, device: str = "cpu", batch: int = 16):
        self.device = device
        self.batch = batch
        self.model = load_checkpoint(checkpoint, device)

    def _face_box(self, avatar) -> tuple[int, int, int, int]:
        f = avatar.ann.face
        side = max(f.w, f.h) * 1.05
        x0 = int(max(0, f.cx - side / 2))
        y0 = int(max(0, f.cy - side / 2))
        x1 = int(min(avatar.w, f.cx + side / 2))
        y1 = int(min(avatar.h, f.cy + side / 2 + f.h * 0.1))  # the original pads the chin
        return x0, y0, x1, y1

    @torch.inference_mode()
    def render(self, avatar, audio: np.ndarray, rate: int, t0: float = 0.0,
               fps: int = 25) -> Iterator[np.ndarray]:
        import av as pyav

        from pipelines.audio import resample

        wav = audio.astype(np.float32) / (32768.0 if audio.dtype == np.int16 else 1.0)
        wav = resample(wav, rate, SR) if rate != SR else wav
        n = max(1, int(np.ceil(wav.size / SR * fps)))
        mels = mel_windows(melspectrogram(wav), n, fps)
        x0, y0, x1, y1 = self._face_box(avatar)

        def resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
            frame = pyav.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            return frame.reformat(width=w, height=h).to_ndarray()

        for b0 in range(0, n, self.batch):
            idx = range(b0, min(n, b0 + self.batch))
            bases = [avatar.frame(t0 + i / fps) for i in idx]
            faces = np.stack([resize(b[y0:y1, x0:x1], FACE, FACE)[..., ::-1] for b in bases])
            masked = faces.copy()
            masked[:, FACE // 2:] = 0
            inp = np.concatenate([masked, faces], axis=3).transpose(0, 3, 1, 2) / 255.0
            face_t = torch.from_numpy(inp.astype(np.float32)).to(self.device)
            mel_t = torch.from_numpy(mels[b0:b0 + len(idx), None]).to(self.device)
            pred = self.model(mel_t, face_t).cpu().numpy().transpose(0, 2, 3, 1) * 255.0
            for base, p in zip(bases, pred, strict=True):
                face = resize(np.clip(p, 0, 255).astype(np.uint8)[..., ::-1].copy(),
                              x1 - x0, y1 - y0)
                out = base.copy()
                out[y0:y1, x0:x1] = face
                yield out
