"""MedMNIST-C's corruptions (Di Salvo et al. 2024, the `medmnistc` package) of a task's test images.

The corruptions and their five severities are the package's own (`CORRUPTIONS_DS[task]`), applied as its
`DatasetManager` applies them: each image as an RGB PIL image, converted back to grey for grey tasks, severity by
severity over every image in order. Its random corruptions draw from numpy's global generator (and impulse noise
from a `default_rng`), seeded by its `seed_everything`; here that seed is set at the start of every corruption, so
a corruption's images do not depend on which other corruptions were asked for (the package seeds once per task,
so its later corruptions continue the stream of the earlier ones).

MedMNIST-C calibrated the severities on the 224-px images; here they corrupt the images at the size the run was
trained on (28 px in the record grid), so a severity is not the same visual strength as in the paper.

One fix of the package's code: its motion blur decodes ImageMagick's PNG with `np.fromstring`, which numpy 2
removed, and reads a grey PNG back as RGB only for 224-px images; `_MotionBlur` is its `apply` with
`np.frombuffer` and the grey case for any size (the parameters, the random angle and ImageMagick's filter are
unchanged).
"""

from __future__ import annotations

from io import BytesIO

import numpy as np

from bench.errors import BenchError, one_line

SEVERITIES = (1, 2, 3, 4, 5)
INSTALL = ("pip install --no-deps medmnistc==0.1.0 wand (its pins would downgrade scikit-image and medmnist) and "
           "the ImageMagick library (apt-get install libmagickwand-6.q16-6)")


def _package():
    try:
        from medmnistc.corruptions import registry
        from medmnistc.utils.baselines import BASELINES
    except ImportError as e:  # the package, or ImageMagick under wand (whose message is four lines)
        what = "ImageMagick's MagickWand library" if "MagickWand" in str(e) else "the medmnistc package"
        raise BenchError(f"bench analyze robustness needs {what} ({one_line(e)}): {INSTALL}") from None
    return registry, BASELINES


def corruptions(task: str) -> dict:
    """{name: the package's corruption object} for a 2D MedMNIST task, in the package's order."""
    registry, _ = _package()
    if task not in registry.CORRUPTIONS_DS:
        raise BenchError(f"MedMNIST-C defines no corruptions for {task} (it covers the 12 2D tasks: "
                         f"{', '.join(registry.CORRUPTIONS_DS)})")
    out = dict(registry.CORRUPTIONS_DS[task])
    if "motion_blur" in out:
        out["motion_blur"] = _fixed_motion_blur(out["motion_blur"].severity_params)
    return out


def alexnet_errors(task: str) -> tuple[float, dict[str, float]]:
    """MedMNIST-C's reference: AlexNet's clean balanced error and its mean balanced error per corruption."""
    _, baselines = _package()
    ref = baselines[task]
    return float(ref["clean_score"]), {k: float(v) for k, v in ref["raw_scores"].items()}


def is_rgb(task: str) -> bool:
    registry, _ = _package()
    return bool(registry.DATASET_RGB[task])


def corrupt(images: np.ndarray, task: str, name: str, seed: int = 0) -> np.ndarray:
    """The 5 severities of corruption `name` of uint8 images (N, H, W) grey or (N, H, W, 3) RGB, as the package's
    DatasetManager makes them after `seed_everything(seed)`: an array (5, *images.shape)."""
    from medmnistc.utils.utils import seed_everything
    from PIL import Image

    table = corruptions(task)
    if name not in table:
        raise BenchError(f"--corruption {name} is not one of MedMNIST-C's for {task}: {', '.join(table)}")
    corruptor, rgb = table[name], is_rgb(task)
    rng = seed_everything(seed)
    if name == "impulse_noise":
        corruptor.rng = rng  # the package gives skimage this generator
    out = np.empty((len(SEVERITIES), *images.shape), np.uint8)
    for s in range(len(SEVERITIES)):
        for i, img in enumerate(images):
            done = corruptor.apply(Image.fromarray(img).convert("RGB"), s)
            if not rgb:
                done = Image.fromarray(done).convert("L")
            out[s, i] = np.asarray(done)
    return out


def _motion_blur_class():
    from medmnistc.corruptions.filter import MotionBlur, MotionImage

    class MotionBlurFixed(MotionBlur):
        def apply(self, img, severity=-1, augmentation=False):
            import cv2

            if augmentation:
                return super().apply(img, severity, augmentation)
            radius, sigma = self.severity_params[severity]
            with BytesIO() as output:
                img.save(output, format="PNG")
                blurred = MotionImage(blob=output.getvalue())
            blurred.motion_blur(radius=radius, sigma=sigma, angle=np.random.uniform(-45, 45))
            decoded = cv2.imdecode(np.frombuffer(blurred.make_blob(), np.uint8), cv2.IMREAD_UNCHANGED)
            if decoded.ndim == 2:  # ImageMagick wrote a grey PNG: grey to RGB, as the package does at 224 px
                return np.clip(np.stack([decoded] * 3, -1), 0, 255).astype(np.uint8)
            return np.clip(decoded[..., [2, 1, 0]], 0, 255).astype(np.uint8)  # BGR to RGB

    return MotionBlurFixed


def _fixed_motion_blur(params):
    """The package's MotionBlur with the fix above (its class exists only once the package imports)."""
    return _motion_blur_class()(params)

