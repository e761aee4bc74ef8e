"""Explain a prediction: per image a PNG of the image, a class activation map and an
occlusion-sensitivity map (each with a colour bar), and one HTML page gathering them with
each image's top-k classes and its nearest training images in the feature store.

Class activation map: with average pooling the pooled feature of channel c is the mean of
its spatial map A[i, j, c]. A linear classifier (logreg, linear_svm, sgd: a StandardScaler,
then weights w) scores class k as ``sum_c w[k, c] / s[c] * mean_ij A[i, j, c] + const``, so
``CAM_k[i, j] = sum_c w[k, c] / s[c] * A[i, j, c]`` is exact: its mean is the class score
less a constant. For any other learner (or max pooling) the channel weights are the gradient
of the class's probability with respect to the pooled features, computed numerically
through the classifier (Grad-CAM with a numerical gradient): an approximation, and the page
says so. Occlusion sensitivity (a grey patch slid over the image; the drop of the predicted
class's probability) needs nothing of the learner and works for every one.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featx.core.errors import UsageError
from featx.core.escape import chart_text
from featx.core.files import write_atomic
from featx.core.layout import safe_name
from featx.core.log import plural
from featx.inspect.visualize import MAPS_TOP, feature_maps, maps_png
from featx.report.pages import picture, png_uri, render

log = logging.getLogger(__name__)

GREY = 128  # the occluding patch's pixel value (the mid-grey of the 0-255 input)
EXACT = "CAM (exact: linear classifier on average-pooled features)"
GRADIENT = ("Grad-CAM (approximate: channel weights = numerical gradient of the class "
            "probability through the classifier)")


@dataclass
class Explanation:
    """What :func:`explain_image` found for one image.

    Attributes
    ----------
    path : str
    image : ndarray of shape (size, size, 3), uint8, the image as the backbone reads it
    top : list of (class name, probability), best first
    cams : dict of class name -> ndarray of shape (size, size), the activation map
        (upsampled to the input, ReLU'd), or empty where the settings allow none
    cam_method : str, how the maps were computed (or why there is none)
    occlusion : ndarray of shape (size, size), drop of the predicted class's probability
    neighbours : list of (path, label, cosine similarity), most similar first
    """

    path: str
    image: np.ndarray
    top: list[tuple[str, float]]
    cams: dict[str, np.ndarray]
    cam_method: str
    occlusion: np.ndarray
    neighbours: list[tuple[str, str, float]] = field(default_factory=list)

    @property
    def predicted(self) -> str:
        return self.top[0][0]


# --- class activation maps ------------------------------------------------------------------

def linear_weights(model: Any, n_features: int) -> np.ndarray | None:
    """(n_classes, n_features): the class weights of a linear learner on the features as the
    store holds them (the StandardScaler's scale folded in), rows in ``model.classes_``
    order; None when the model is not a scaler + linear classifier."""
    from sklearn.pipeline import Pipeline

    scaler, clf = None, model
    if isinstance(model, Pipeline):
        steps = [s for _, s in model.steps if s is not None and s != "passthrough"]
        if len(steps) == 2 and hasattr(steps[0], "scale_"):
            scaler, clf = steps
        elif len(steps) != 1:
            return None
        else:
            clf = steps[0]
    elif hasattr(model, "scaler_") and hasattr(model, "sgd_"):  # featx's StreamingSGD
        scaler, clf = model.scaler_, model.sgd_
    coef = getattr(clf, "coef_", None)
    if coef is None or np.ndim(coef) != 2 or coef.shape[1] != n_features:
        return None
    w = np.asarray(coef, np.float64)
    if scaler is not None:
        scale = getattr(scaler, "scale_", None)
        if scale is not None:
            w = w / np.where(scale == 0, 1.0, scale)
    if len(w) == 1:  # binary: one margin for the second class
        w = np.vstack([-w[0], w[0]])
    return w


def numerical_gradient(proba: Any, x: np.ndarray, columns: Sequence[int],
                       eps: float | None = None) -> np.ndarray:
    """(len(columns), n_features): central differences of ``proba(x)[:, column]`` at one
    feature row ``x`` of shape (n_features,), in one batched call per side."""
    n = len(x)
    eps = eps or max(1e-4, 1e-3 * float(np.abs(x).mean() or 1.0))
    steps = np.eye(n, dtype=np.float64) * eps
    up = proba((x[None, :] + steps).astype(np.float32))
    down = proba((x[None, :] - steps).astype(np.float32))
    return ((up - down)[:, list(columns)] / (2 * eps)).T


def cam_pooling(backbone: Any) -> str:
    """The backbone's pooling as the CAM reads it: ``mean`` is ``avg``, a CNN's (the same
    global average of its map) as a KerasHub backbone's (featx.features.hub: the patch
    tokens laid out as their grid, average-pooled)."""
    pooling = backbone.config.pooling
    return "avg" if pooling == "mean" else pooling


def spatial_model(backbone: Any) -> Any:
    """The keras model giving the backbone's map before pooling, (1, h, w, channels): a
    CNN's last map, or a KerasHub transformer's patch tokens as their (h, w) grid."""
    import keras

    model = backbone.model
    pool = model.layers[-1]
    if len(backbone.layers) > 1 or cam_pooling(backbone) not in ("avg", "max"):
        return None
    return keras.Model(model.input, pool.input)


def activation_maps(predictor: Any, image: np.ndarray, feature: np.ndarray,
                    classes: Sequence[str]) -> tuple[dict[str, np.ndarray], str]:
    """The activation map of each of ``classes`` at the input's resolution, and the method.

    Parameters
    ----------
    predictor : featx.learn.predict.Predictor
    image : ndarray of shape (size, size, 3), uint8
    feature : ndarray of shape (n_features,), the image's pooled features
    classes : class names

    Returns
    -------
    maps : dict of class name -> ndarray of shape (size, size), ReLU'd (zero where no
        evidence for the class)
    method : str
    """
    backbone = predictor.backbone
    pooling = cam_pooling(backbone)
    if predictor.tencrop:
        return {}, "no CAM: the model predicts on the mean of 10 crops (occlusion only)"
    spatial = spatial_model(backbone)
    if spatial is None:
        layers = ", ".join(map(str, backbone.layers)) or "the last layer"
        return {}, (f"no CAM: pooling {backbone.config.pooling!r} of {layers} "
                    "(a CAM needs one layer, average or max pooled; occlusion only)")
    a = np.asarray(spatial(backbone.preprocess(image[None]), training=False), np.float64)[0]
    columns = [predictor.classes.index(c) for c in classes]
    weights = linear_weights(predictor.model, a.shape[-1]) if pooling == "avg" else None
    if weights is not None:
        method = EXACT
        w = weights[columns]
    else:
        method = GRADIENT
        w = numerical_gradient(predictor.predict_proba, feature.astype(np.float64), columns)
    size = image.shape[0]
    maps = {}
    for name, wk in zip(classes, w):
        cam = np.maximum(np.tensordot(a, wk, axes=([2], [0])), 0)  # (h, w)
        maps[name] = upsample(cam, size)
    return maps, method


def upsample(m: np.ndarray, size: int) -> np.ndarray:
    """A small (h, w) map bilinearly resized to (size, size), float32."""
    from PIL import Image

    return np.asarray(Image.fromarray(m.astype(np.float32), "F").resize(
        (size, size), Image.BILINEAR), np.float32)


# --- occlusion --------------------------------------------------------------------------------

def occlusion_map(probability: Any, image: np.ndarray, patch: int, stride: int,
                  batch_size: int = 32) -> np.ndarray:
    """(size, size): the mean drop of the class probability over the grey patches that cover
    each pixel (``probability(images) -> (n,)`` on (n, size, size, 3) uint8 images).

    Parameters
    ----------
    probability : callable, images -> probabilities of one class, shape (n,)
    image : ndarray of shape (size, size, 3), uint8
    patch, stride : int, in input pixels

    Returns
    -------
    ndarray of shape (size, size), float32
    """
    size = image.shape[0]
    if not 1 <= patch <= size:
        raise UsageError(f"--patch {patch}: must be between 1 and the input size {size}")
    if stride < 1:
        raise UsageError(f"--stride {stride}: must be at least 1")
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)  # cover the last rows and columns too
    boxes = [(t, x) for t in starts for x in starts]
    base = float(probability(image[None])[0])
    drops = []
    for i in range(0, len(boxes), batch_size):
        batch = np.repeat(image[None], len(boxes[i:i + batch_size]), axis=0)
        for b, (t, x) in enumerate(boxes[i:i + batch_size]):
            batch[b, t:t + patch, x:x + patch] = GREY
        drops.append(base - np.asarray(probability(batch)))
    drop = np.concatenate(drops)
    total = np.zeros((size, size), np.float64)
    count = np.zeros((size, size), np.float64)
    for d, (t, x) in zip(drop, boxes):
        total[t:t + patch, x:x + patch] += d
        count[t:t + patch, x:x + patch] += 1
    return (total / np.maximum(count, 1)).astype(np.float32)


# --- nearest training images ----------------------------------------------------------------

def store_for(model_path: Path, bundle_pipeline: dict[str, Any]) -> Path | None:
    """The feature store the model was trained from: the one its result JSON names (beside
    the model), else the one its pipeline locates; None if neither exists."""
    result = model_path.with_suffix(".json")
    try:
        store = Path(json.loads(result.read_text())["store"])
        if store.is_file():
            return store
    except (OSError, KeyError, TypeError, ValueError):
        pass
    try:
        from featx.core.config import Config
        from featx.features.plan import find_store

        path = find_store(Config.from_dict(bundle_pipeline, source=str(model_path))).path
        return path if path.is_file() else None
    except Exception as e:  # no dataset here, other machine: no neighbours, said below
        log.debug("no store for %s: %s", model_path, e)
        return None


def nearest(store_path: Path, queries: np.ndarray, k: int
            ) -> list[list[tuple[str, str, float]]]:
    """The ``k`` training (and validation) rows of a store most cosine-similar to each query,
    read chunk by chunk (memory: one chunk and k rows per query).

    Parameters
    ----------
    store_path : the store's .h5 file
    queries : ndarray of shape (n_queries, n_features)
    k : int

    Returns
    -------
    list (one per query) of (absolute path, label name, similarity), most similar first
    """
    from featx.data.dataset import TEST
    from featx.store.read import FeatureStore

    q = _unit(np.asarray(queries, np.float32).reshape(len(queries), -1))
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    with FeatureStore(store_path) as store:
        rows = np.flatnonzero((store.split != TEST) & store.ok)
        paths, labels, names = store.paths, store.labels, store.label_names
        root = Path(str(store.attrs.get("root", "")))
        for sel, block in store.iter_chunks(rows):
            x = block.reshape(len(sel), -1)
            if x.shape[1] != q.shape[1]:
                raise UsageError(f"{store_path}: features of width {x.shape[1]}, the model's "
                                   f"are {q.shape[1]}: not the store it was trained on")
            s = q @ _unit(x).T
            best_s = np.concatenate([best_s, s], axis=1)
            best_i = np.concatenate([best_i, np.broadcast_to(sel, s.shape)], axis=1)
            keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
            best_s = np.take_along_axis(best_s, keep, 1)
            best_i = np.take_along_axis(best_i, keep, 1)
    return [[(str(root / paths[i]), names[labels[i]], float(s)) for i, s in zip(ii, ss)]
            for ii, ss in zip(best_i, best_s)]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# --- the whole explanation ------------------------------------------------------------------

BATCH = 32  # images per forward pass


def _forward(backbone: Any) -> Any:
    """``features(images)`` of (n, size, size, 3) uint8 images at the input size, flattened to
    (n, n_features), through one traced forward pass per backbone (kept on it)."""
    run = getattr(backbone, "_explain_forward", None)
    if run is None:
        batched = backbone.batched(BATCH)

        def run(images: np.ndarray) -> np.ndarray:
            out = [batched(images[i:i + BATCH], np.ones(len(images[i:i + BATCH]), bool))
                   for i in range(0, len(images), BATCH)]
            return np.concatenate(out).reshape(len(images), -1)

        backbone._explain_forward = run
    return run


def explain_image(predictor: Any, path: str, top: int = 5, classes: Sequence[str] = (),
                  patch: int | None = None, stride: int | None = None) -> Explanation:
    """Top-k, activation maps (predicted class and ``classes``) and occlusion map of one
    image file, read exactly as extraction reads it (no neighbours: see :func:`explain`)."""
    from featx.data.images import load_image
    from featx.features.transformer import pixel_features

    size = predictor.backbone.input_size
    try:
        image = load_image(path, size)
    except Exception as e:
        raise UsageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    for name in classes:
        if name not in predictor.classes:
            raise UsageError(f"--class {name!r}: the model has no such class (its classes: "
                               f"{', '.join(predictor.classes)})")

    forward = _forward(predictor.backbone)

    def proba(images: np.ndarray) -> np.ndarray:
        if predictor.tencrop:  # the mean of 10 crops of each image, as the model predicts
            return predictor.predict_proba(pixel_features(predictor.backbone, list(images),
                                                          BATCH, True))
        return predictor.predict_proba(forward(images))

    feature = forward(image[None])[0]
    p = proba(image[None])[0]
    order = np.argsort(-p, kind="stable")
    ranked = [(predictor.classes[j], float(p[j])) for j in order[:max(1, top)]]
    wanted = list(dict.fromkeys([ranked[0][0], *classes]))
    cams, method = activation_maps(predictor, image, feature, wanted)
    column = int(order[0])
    patch = max(1, size // 4) if patch is None else patch
    occlusion = occlusion_map(lambda im: proba(im)[:, column], image, patch,
                              max(1, patch // 2) if stride is None else stride)
    return Explanation(str(path), image, ranked, cams, method, occlusion)


def explain(model: str | Path, images: Sequence[str | Path], out: str | Path,
            top: int = 5, classes: Sequence[str] = (), patch: int | None = None,
            stride: int | None = None, neighbours: int = 5, store: str | Path | None = None,
            weights: str | None = None, trust: bool = False, maps: str = "",
            maps_top: int = MAPS_TOP) -> list[Path]:
    """``featx explain``: one PNG per image and ``index.html`` gathering them, in ``out``.

    Parameters
    ----------
    model : a saved model file or a run folder (its best model)
    images : image files or folders (expanded as featx predict does)
    out : folder for the PNGs and the page
    top : int, classes listed per image
    classes : extra class names to map besides the predicted one
    patch, stride : occlusion patch side and step in input pixels (default size/4, patch/2)
    neighbours : nearest training images shown (0: none)
    store : the feature store to search (default: the one the model was trained from)
    maps : a layer of the backbone: also a PNG per image of its ``maps_top`` most active
        feature maps (featx.inspect.visualize.maps_png)

    Returns
    -------
    list of Path: the PNGs, then the HTML page
    """
    from featx.learn.predict import Predictor, image_files

    if top < 1:
        raise UsageError(f"--top must be at least 1, not {top}")
    if neighbours < 0:
        raise UsageError(f"--neighbours must be 0 or more, not {neighbours}")
    if maps and maps_top < 1:
        raise UsageError(f"--maps-top must be at least 1, not {maps_top}")
    for flag, value in (("--patch", patch), ("--stride", stride)):
        if value is not None and value < 1:  # before the model loads; 0 is not "default"
            raise UsageError(f"{flag} must be at least 1, not {value}")
    predictor = Predictor.load(model, weights, trust=trust)
    if maps:
        predictor.backbone.depth(maps)  # an unknown layer fails before any image is read
    paths = image_files(images)
    if not paths:
        raise UsageError(f"no image files in {', '.join(map(str, images))}")
    store_path = Path(store) if store else None
    if store_path is not None and not store_path.is_file():
        raise UsageError(f"--store {store_path}: no such file")
    missing = ""  # why the page shows no nearest training images, where it has none
    if neighbours and store_path is None:
        from featx.learn import modelfile

        source = Path(predictor.source)  # the file Predictor.load chose (and said so, once)
        with warnings.catch_warnings():  # its version warnings were shown as it loaded
            warnings.simplefilter("ignore")
            bundle = modelfile.load(source, trust=trust)
        store_path = store_for(source, bundle["pipeline"])
        if store_path is None:
            missing = (f"No nearest training images: no feature store found for {source.name} "
                       "(give --store).")
            log.warning("no feature store found for %s: no nearest training images (give "
                        "--store)", source)
    results = [explain_image(predictor, p, top, classes, patch, stride) for p in paths]
    if neighbours and store_path is not None:
        feats = _forward(predictor.backbone)(np.stack([r.image for r in results]))
        for r, found in zip(results, nearest(store_path, feats, neighbours)):
            r.neighbours = found
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, drawn = [], []
    for i, r in enumerate(results):
        png = out / f"{i + 1:03d}-{safe_name(Path(r.path).stem)[:60]}.png"
        write_atomic(png, figure_png(r, predictor.calibration))
        written.append(png)
        if maps:  # what the layer sees, beside why the model decided
            a = feature_maps(predictor.backbone, maps, r.image[None])[0]
            drawn.append(png.with_name(png.stem + "-maps.png"))
            write_atomic(drawn[-1], maps_png(r.image, a, maps, maps_top,
                                           f"{chart_text(Path(r.path).name)}: "))
    page = out / "index.html"
    write_atomic(page, html_page(results, written, predictor, drawn, missing))
    written += drawn
    log.info("explained %s in %s", plural(len(results), "image"), out)
    return written + [page]


# The page shows the figure at its own size (narrower than its 1168 px of content at a
# desktop's width, scrolled sideways on a phone): text of FONT points at DPI is 14 px there,
# as the page's own text.
FONT = 10
DPI = 100
PANEL = 3.3  # inches per panel, its colour bar included
COLUMNS = 3  # panels per row: 3 x 3.3 in at 100 dpi = 990 px, narrower than the page


def figure_png(r: Explanation, calibration: str = "probabilities") -> bytes:
    """One explanation as a PNG: the image as the backbone reads it, the activation map of
    each mapped class and the occlusion map, each map with a colour bar saying what its
    colours mean. The top-k and the nearest training images are the page's (html_page), as
    text and thumbnails, not drawn here as well; a map that cannot be made is left out (the
    page says why)."""
    from matplotlib.figure import Figure

    score = "probability" if calibration == "probabilities" else "score"
    panels = 2 + len(r.cams)
    cols = min(panels, COLUMNS)
    rows = -(-panels // cols)
    fig = Figure(figsize=(PANEL * cols, 3.1 * rows), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes:
        ax.axis("off")
    axes[0].imshow(r.image)
    axes[0].set_title("the image as read", fontsize=FONT)
    for ax, (name, cam) in zip(axes[1:], r.cams.items()):
        ax.imshow(r.image)
        peak = float(cam.max()) or 1.0
        shown = ax.imshow(cam / peak, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(f"CAM: {chart_text(name[:24])}", fontsize=FONT)
        bar = fig.colorbar(shown, ax=ax, shrink=0.8, ticks=[0, 1])
        bar.ax.set_yticklabels(["none", "peak"], fontsize=FONT)
        bar.set_label("evidence for the class", fontsize=FONT)
    ax = axes[1 + len(r.cams)]
    ax.imshow(r.image)
    top = float(np.abs(r.occlusion).max()) or 1.0
    shown = ax.imshow(r.occlusion, cmap="RdBu_r", vmin=-top, vmax=top, alpha=0.55)
    ax.set_title(f"occlusion: {chart_text(r.predicted[:24])}", fontsize=FONT)
    bar = fig.colorbar(shown, ax=ax, shrink=0.8)
    bar.ax.tick_params(labelsize=FONT)
    # red: covering the region lowers the class's score (it is evidence for the class)
    bar.set_label(f"{score} lost when covered\n(red: for, blue: against)", fontsize=FONT)
    for extra in axes[panels:]:  # a last row with fewer panels: no empty boxes
        fig.delaxes(extra)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def html_page(results: Sequence[Explanation], pngs: Sequence[Path], predictor: Any,
              maps: Sequence[Path] = (), missing: str = "") -> str:
    """One self-contained page (templates/explain.html): per image, under its file name
    (the full path in a details block), its top-k as a table, its PNG (embedded), its
    feature-map PNG (``maps``, one per image, if drawn) and the nearest training images as
    linked thumbnails, or ``missing``: why there are none."""
    images = []
    for i, (r, png) in enumerate(zip(results, pngs)):
        name = Path(r.path).name
        images.append({
            "name": name, "path": r.path, "cam_method": r.cam_method,
            "top": [(c, f"{p:.3f}") for c, p in r.top],
            "uri": png_uri(png.read_bytes()), "alt": f"explanation of {name}",
            "maps": png_uri(maps[i].read_bytes()) if maps else None,
            "maps_alt": f"feature maps of {name}",
            "neighbours": [(picture(p), label, sim) for p, label, sim in r.neighbours]})
    score = "probability" if predictor.calibration == "probabilities" else "score"
    return render("explain.html", title=f"featx explain: {Path(predictor.source).name}",
                  source=predictor.source, source_name=Path(predictor.source).name,
                  classifier=predictor.classifier, backbone=predictor.backbone.spec.name,
                  calibration=predictor.calibration, score=score, images=images,
                  missing=missing)
