"""The detectors of the ensemble, batched, returning plain detections in pixels.

Any number of them (``data_annotation.py --detector SPEC``, plus the guide's ``--yolo_model`` and
``--detr_model``); :func:`load_detector` picks the kind from the checkpoint itself:

* an Ultralytics file (``.pt``, ``.yaml``): YOLO of any version, Ultralytics RT-DETR, YOLO-World
  (given ``--classes``, its vocabulary is set to them);
* a transformers model whose config is a zero-shot detector (OWLv2, OWL-ViT, Grounding DINO):
  prompted with the class vocabulary (``--classes``, or the class map's names);
* any other transformers ``AutoModelForObjectDetection`` model (DETR, Deformable DETR, RT-DETR v1/v2,
  D-FINE, ...).

* YOLO through Ultralytics. It treats a list of PIL images as one batch (chunked here)
  and, by default, letterboxes a batch to the smallest common rectangle, so a box would
  depend on which images share the batch. ``rect=False`` makes every image a fixed
  ``imgsz`` square: an image's boxes are the same alone or in any batch.
* RT-DETR through transformers (its processor resizes every image to one fixed size,
  so batching does not change results). Post-processing is done here: one label per
  query (the best class; transformers' top-k over queries x classes can return one query
  several times), boxes clipped to the image, degenerate ones dropped, capped at ``max_det``.

Class names are harmonised: lower-cased, trimmed, ``_`` -> space, then ``--class_map``
(a class mapped to ``null`` is dropped).

Ultralytics checkpoints are pickles, and Ultralytics unpickles them with ``weights_only=False``: a ``.pt``
from a stranger could run any code when loaded. They are loaded through Ultralytics' own safe loading
(``torch.load(weights_only=True)`` against its allow-list of Ultralytics and torch classes) unless the caller
trusts the files (``data_annotation.py --trust_detector_files``); a file that needs anything else is refused
in one line, before any of its code runs. transformers models load from safetensors, or from ``.bin`` files
with ``weights_only=True``.
"""
from __future__ import annotations

import contextlib
import pickle
import sys
from pathlib import Path
from typing import Sequence

from PIL import Image

from vlm_core.boxes import clip_box, is_degenerate
from vlm_core.io_utils import InputError, read_json

DETECTOR_NAMES = ("yolo", "rtdetr")
# The source name of objects imported from existing labels (import_labels.py); a --class_map may have a section for it.
LABELS_SOURCE = "labels"


def import_ultralytics():
    """``ultralytics.YOLO``, with Ultralytics' patch of ``PIL.Image.open`` undone.

    Importing Ultralytics replaces ``PIL.Image.open`` with a version that, on a file Pillow
    cannot identify, tries to pip-install ``pi-heif`` and raises ``ModuleNotFoundError``
    offline: a broken image would then crash the run instead of being skipped.
    """
    from ultralytics import YOLO
    patches = sys.modules.get("ultralytics.utils.patches")
    original = getattr(patches, "_image_open", None)
    if original is not None and Image.open is not original:
        Image.open = original
    return YOLO


TRUST_FLAG = "--trust_detector_files"


@contextlib.contextmanager
def ultralytics_safe_loading(weights: str, flag: str, trust: bool):
    """Within the block, Ultralytics loads checkpoints with its safe loading (``ULTRALYTICS_SAFE_LOAD``: its
    module flag, set for the block only), unless ``trust``; a ``.yaml`` is no pickle and needs none."""
    if trust or Path(weights).suffix.lower() != ".pt":
        yield
        return
    import ultralytics.nn.tasks as tasks
    if not hasattr(tasks, "SAFE_LOAD") or not getattr(getattr(tasks, "_SafeLoad", None), "SUPPORTED", False):
        import ultralytics
        raise InputError(f"{flag}: the installed ultralytics {ultralytics.__version__} cannot load {weights} safely "
                         f"(unpickling it could run any code): upgrade ultralytics and torch, or add {TRUST_FLAG} "
                         "if you trust the file")
    before = tasks.SAFE_LOAD
    tasks.SAFE_LOAD = True
    try:
        yield
    finally:
        tasks.SAFE_LOAD = before


def _refused_globals(weights: str) -> list[str]:
    """The globals of a refused checkpoint outside the usual namespaces (for the message only)."""
    import torch
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(weights)
    except Exception:  # not a zip checkpoint: nothing to name
        return []
    return [n for n in names if not n.startswith(("ultralytics.", "torch.", "collections.", "numpy."))][:3]


def normalize_name(name: str) -> str:
    return " ".join(str(name).replace("_", " ").strip().lower().split())


class ClassMap:
    """Maps each detector's class names to one vocabulary.

    The ``--class_map`` file is either one mapping for all detectors
    (``{"wine glass": "glass", "person": null}``) or one per detector
    (``{"yolo": {...}, "rtdetr": {...}}``; ``"labels"`` for imported labels). Keys are matched after
    :func:`normalize_name`.
    """

    def __init__(self, shared: dict | None = None, per_detector: dict | None = None):
        self.shared = {normalize_name(k): v for k, v in (shared or {}).items()}
        self.per_detector = {d: {normalize_name(k): v for k, v in m.items()}
                             for d, m in (per_detector or {}).items()}

    @classmethod
    def from_file(cls, path: str | Path | None) -> "ClassMap":
        if path is None:
            return cls()
        data = read_json(path)
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a JSON object mapping class names to class names")
        # One section per detector (any detector names): every value is a mapping; a shared map's values
        # are class names or null.
        per = bool(data) and all(isinstance(v, dict) for v in data.values())
        for scope, mapping in (data.items() if per else [("*", data)]):
            for key, value in mapping.items():
                if value is not None and (not isinstance(value, str) or not value.strip()):
                    where = key if scope == "*" else f"{scope}.{key}"
                    raise InputError(f"{path}: {where}: expected a class name or null")
        return cls(per_detector=data) if per else cls(shared=data)

    def __call__(self, detector: str, name: str) -> str | None:
        key = normalize_name(name)
        mapping = self.per_detector.get(detector, self.shared)
        if key in mapping:
            value = mapping[key]
            return None if value is None else normalize_name(value)
        return key

    def to_dict(self) -> dict:
        return dict(self.per_detector) if self.per_detector else dict(self.shared)

    def prompts(self, detector: str) -> list[str]:
        """The names a zero-shot detector is prompted with when no ``--classes`` are given: the keys of its
        map (or of the shared one) that map to a class, so ``{"glass bottle": "glass"}`` asks for "glass bottle"
        and labels the boxes "glass"."""
        mapping = self.per_detector.get(detector, self.shared)
        return [k for k, v in mapping.items() if v is not None]


def _finish(dets: list[dict], width: int, height: int, max_det: int) -> list[dict]:
    """Clip, drop degenerate boxes, order by score (ties by position), keep ``max_det``."""
    out = []
    for d in dets:
        box = clip_box(d["bbox"], width, height)
        if is_degenerate(box):
            continue
        out.append({"label": d["label"], "bbox": box, "score": d["score"]})
    out.sort(key=lambda d: (-d["score"], d["bbox"][1], d["bbox"][0], d["label"]))
    return out[:max_det] if max_det > 0 else out


class Detector:
    """What both detectors share: a name and class labels mapped onto one vocabulary.

    Each subclass sets ``labels`` (class index -> name, None for classes the class map
    drops) and has ``detect(images) -> one list of detections per image``.
    """
    name = ""
    labels: dict[int, str | None] = {}

    def vocabulary(self) -> set[str]:
        return {n for n in self.labels.values() if n}


class YoloDetector(Detector):
    """An Ultralytics model: YOLO (any version), RT-DETR, or YOLO-World (``classes`` set its vocabulary)."""
    name = "yolo"

    def __init__(self, weights: str, device: str, class_map: ClassMap, conf: float, imgsz: int, max_det: int,
                 batch_size: int, name: str = "yolo", flag: str = "--yolo_model", classes: Sequence[str] = (),
                 trust: bool = False):
        # ``weights`` passed runtime.require_yolo_weights: a local file, or an official name
        # (yolov8x.pt) that Ultralytics downloads on first use. ``trust``: unpickle it without the allow-list.
        YOLO = import_ultralytics()
        self.name = name
        try:
            with ultralytics_safe_loading(weights, flag, trust):
                self.model = YOLO(weights)
                kind = type(self.model.model).__name__
                if kind.startswith("RTDETR"):  # Ultralytics' RT-DETR predicts through its own class (no NMS)
                    from ultralytics import RTDETR
                    self.model = RTDETR(weights)
                elif kind.startswith("World"):
                    from ultralytics import YOLOWorld
                    self.model = YOLOWorld(weights)
                names = self.model.names  # loads the weights: a bad checkpoint fails here, not in the first batch
            if kind.startswith("World") and classes:  # needs the CLIP text encoder (fetched on first use)
                self.model.set_classes(list(classes))
                names = self.model.names
        except InputError:
            raise
        except Exception as e:  # Ultralytics raises many kinds for a bad checkpoint
            cause = e
            while cause is not None and not isinstance(cause, pickle.UnpicklingError):
                cause = cause.__cause__ or cause.__context__
            if cause is not None and not trust:  # the safe loading met a global outside its allow-list
                foreign = _refused_globals(weights)
                needs = f" ({', '.join(foreign)})" if foreign else ""
                raise InputError(f"{flag}: refused to load {weights}: it needs Python objects outside the Ultralytics "
                                 f"checkpoint format{needs}, and unpickling them can run any code; add {TRUST_FLAG} "
                                 "only if you trust the file") from None
            raise InputError(f"{flag}: cannot load {weights}: {str(e).splitlines()[0] if str(e) else e!r}") \
                from None
        # Ultralytics wants a CUDA index ("cuda:1" -> 1), not a torch device string.
        self.device = int(device.split(":")[1]) if device.startswith("cuda:") else (0 if device == "cuda" else device)
        self.conf, self.imgsz, self.max_det = conf, imgsz, max_det
        self.batch_size = max(1, batch_size)
        self.labels = {int(i): class_map(self.name, n) for i, n in names.items()}

    def detect(self, images: Sequence[Image.Image]) -> list[list[dict]]:
        results: list[list[dict]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = list(images[start:start + self.batch_size])
            preds = self.model.predict(chunk, imgsz=self.imgsz, conf=self.conf, max_det=self.max_det or 300,
                                       rect=False, device=self.device, verbose=False)
            for image, pred in zip(chunk, preds):
                boxes = pred.boxes
                xyxy = boxes.xyxy.cpu().tolist()
                scores = boxes.conf.cpu().tolist()
                classes = boxes.cls.cpu().tolist()
                dets = [{"label": self.labels.get(int(c)), "bbox": b, "score": float(s)}
                        for b, s, c in zip(xyxy, scores, classes)]
                dets = [d for d in dets if d["label"] and d["score"] > self.conf]
                results.append(_finish(dets, image.width, image.height, self.max_det))
        return results


class RTDetrDetector(Detector):
    """A transformers ``AutoModelForObjectDetection`` model (RT-DETR, DETR, Deformable DETR, D-FINE, ...)."""
    name = "rtdetr"

    def __init__(self, model_path: str, processor_path: str | None, device: str, class_map: ClassMap,
                 conf: float, max_det: int, batch_size: int, name: str = "rtdetr", flag: str = "--detr_model",
                 processor_flag: str = "--detr_processor"):
        from transformers import AutoImageProcessor, AutoModelForObjectDetection
        self.name = name
        model_dir = Path(model_path)
        if not processor_path and model_dir.is_dir() and not (model_dir / "preprocessor_config.json").is_file():
            raise InputError(f"{flag}: no image processor (preprocessor_config.json) in {model_path}; "
                             f"give {processor_flag}")
        try:
            self.model = AutoModelForObjectDetection.from_pretrained(model_path).to(device).eval()
        except (OSError, ValueError) as e:
            raise InputError(f"{flag}: cannot load {model_path}: {str(e).splitlines()[0]}") from None
        flag = processor_flag if processor_path else flag
        try:
            self.processor = AutoImageProcessor.from_pretrained(processor_path or model_path)
        except (OSError, ValueError) as e:
            raise InputError(f"{flag}: cannot load the image processor from {processor_path or model_path}: "
                             f"{str(e).splitlines()[0][:200]}") from None
        self.device, self.conf, self.max_det = device, conf, max_det
        self.batch_size = max(1, batch_size)
        self.focal = bool(getattr(self.model.config, "use_focal_loss", True))
        self.labels = {int(i): class_map(self.name, n) for i, n in self.model.config.id2label.items()}

    def detect(self, images: Sequence[Image.Image]) -> list[list[dict]]:
        import torch
        results: list[list[dict]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = list(images[start:start + self.batch_size])
            inputs = self.processor(images=chunk, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                out = self.model(**inputs)
            logits = out.logits.float()
            # Focal-loss heads (RT-DETR) score classes independently; softmax heads (DETR) end in "no object".
            probs = logits.sigmoid() if self.focal else logits.softmax(-1)[..., :-1]
            scores, classes = probs.max(-1)  # one label per query
            for image, s, c, b in zip(chunk, scores.cpu(), classes.cpu(), out.pred_boxes.float().cpu()):
                w, h = image.size
                cx, cy, bw, bh = b.unbind(-1)
                boxes = torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)
                keep = s > self.conf
                dets = [{"label": self.labels.get(int(ci)), "bbox": bi, "score": float(si)}
                        for si, ci, bi in zip(s[keep].tolist(), c[keep].tolist(), boxes[keep].tolist())]
                results.append(_finish([d for d in dets if d["label"]], w, h, self.max_det))
        return results


class ZeroShotDetector(Detector):
    """A transformers ``AutoModelForZeroShotObjectDetection`` model (OWLv2, OWL-ViT, Grounding DINO), prompted
    with ``queries`` (the class vocabulary); each query's boxes take the class the class map gives it."""

    def __init__(self, model_path: str, processor_path: str | None, device: str, class_map: ClassMap,
                 conf: float, max_det: int, batch_size: int, name: str, queries: Sequence[str],
                 flag: str = "--detector"):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
        if not queries:
            raise InputError(f"{flag} {model_path}: a zero-shot detector needs its classes: give --classes "
                             "(or a --class_map whose names it can be prompted with)")
        self.name = name
        try:
            self.model = AutoModelForZeroShotObjectDetection.from_pretrained(model_path).to(device).eval()
            self.processor = AutoProcessor.from_pretrained(processor_path or model_path)
        except (OSError, ValueError) as e:
            raise InputError(f"{flag}: cannot load {model_path}: {str(e).splitlines()[0][:200]}") from None
        self.kind = self.model.config.model_type
        self.queries = [normalize_name(q) for q in queries]
        self.device, self.conf, self.max_det = device, conf, max_det
        self.batch_size = max(1, batch_size)
        self.labels = {i: class_map(self.name, q) for i, q in enumerate(self.queries)}

    def _owl(self, chunk, inputs, out) -> list[list[dict]]:
        """OWL-ViT / OWLv2: a box per image patch with a logit per query; one label per box (its best query).
        OWLv2 boxes are fractions of the image padded to a square (bottom and right), OWL-ViT's of the image."""
        probs = out.logits.float().sigmoid()
        scores, classes = probs.max(-1)
        results = []
        for image, s, c, b in zip(chunk, scores.cpu(), classes.cpu(), out.pred_boxes.float().cpu()):
            w, h = image.size
            sx, sy = (max(w, h), max(w, h)) if self.kind == "owlv2" else (w, h)
            cx, cy, bw, bh = b.unbind(-1)
            boxes = [[float(v) for v in row] for row in
                     zip((cx - bw / 2) * sx, (cy - bh / 2) * sy, (cx + bw / 2) * sx, (cy + bh / 2) * sy)]
            keep = (s > self.conf).tolist()
            dets = [{"label": self.labels.get(int(ci)), "bbox": bi, "score": float(si)}
                    for si, ci, bi, k in zip(s.tolist(), c.tolist(), boxes, keep) if k]
            results.append(_finish([d for d in dets if d["label"]], w, h, self.max_det))
        return results

    def _query_tokens(self, input_ids) -> list[list[int]]:
        """For each query, the positions of its tokens in the prompt ``"q1. q2. ..."`` (special tokens and the
        dots that end the phrases are nobody's)."""
        tokenizer = self.processor.tokenizer
        dot, special = tokenizer.convert_tokens_to_ids("."), set(tokenizer.all_special_ids)
        spans, current = [], []
        for pos, token in enumerate(input_ids.tolist()):
            if token == dot:
                spans.append(current)
                current = []
            elif token not in special:
                current.append(pos)
        return spans[:len(self.queries)]

    def _grounded(self, chunk, inputs, out) -> list[list[dict]]:
        """Grounding DINO: a logit per box and prompt token. A query's score is the best of its tokens' (as
        the model was trained: a phrase is grounded by its tokens), and a box takes its best query. The
        processor's own post-processing is not used: it names a box by the tokens above a threshold, which
        can join several queries into one phrase that is none of them. Boxes are fractions of the image."""
        import torch
        probs = out.logits.float().sigmoid().cpu()
        results = []
        for k, (image, p, b) in enumerate(zip(chunk, probs, out.pred_boxes.float().cpu())):
            spans = self._query_tokens(inputs["input_ids"][k].cpu())
            w, h = image.size
            if not any(spans):  # the prompt was cut before the first query (the model's max_text_len)
                results.append([])
                continue
            # A query cut off the prompt scores 0 (its index still names it).
            per_query = torch.stack([p[:, s].max(-1).values if s else torch.zeros(p.shape[0]) for s in spans], -1)
            scores, classes = per_query.max(-1)
            cx, cy, bw, bh = b.unbind(-1)
            boxes = [[float(v) for v in row] for row in
                     zip((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)]
            dets = [{"label": self.labels.get(int(ci)), "bbox": bi, "score": float(si)}
                    for si, ci, bi in zip(scores.tolist(), classes.tolist(), boxes) if si > self.conf]
            results.append(_finish([d for d in dets if d["label"]], w, h, self.max_det))
        return results

    def detect(self, images: Sequence[Image.Image]) -> list[list[dict]]:
        import torch
        results: list[list[dict]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = list(images[start:start + self.batch_size])
            if self.kind.startswith("owl"):
                inputs = self.processor(text=[self.queries] * len(chunk), images=chunk, return_tensors="pt",
                                        padding=True)
            else:  # Grounding DINO reads one lower-case text of "."-ended phrases
                text = " ".join(f"{q}." for q in self.queries)
                inputs = self.processor(images=chunk, text=[text] * len(chunk), return_tensors="pt", padding=True)
            inputs = inputs.to(self.device)
            with torch.inference_mode():
                out = self.model(**inputs)
            results += self._owl(chunk, inputs, out) if self.kind.startswith("owl") else \
                self._grounded(chunk, inputs, out)
        return results


ULTRALYTICS_SUFFIXES = (".pt", ".yaml", ".yml")


def parse_detector_spec(spec: str) -> tuple[str | None, str, str | None]:
    """``[NAME=]MODEL[,PROCESSOR]`` -> (name or None, model, processor or None)."""
    name, _, rest = spec.partition("=") if "=" in spec.split(",")[0] else ("", "", spec)
    model, _, processor = rest.partition(",")
    if not model.strip() or (name and not name.strip()):
        raise InputError(f"--detector {spec!r}: expected [NAME=]MODEL[,PROCESSOR]")
    return (name.strip() or None), model.strip(), (processor.strip() or None)


def detector_kind(model: str) -> str:
    """"ultralytics", "zero_shot" or "transformers", from the file name or the transformers config."""
    if Path(model).suffix.lower() in ULTRALYTICS_SUFFIXES:
        return "ultralytics"
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES
    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise InputError(f"--detector: cannot read the config of {model}: {str(e).splitlines()[0][:200]}") from None
    return "zero_shot" if config.model_type in MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES else "transformers"


def default_detector_name(model: str, kind: str) -> str:
    """What ``sources`` calls a detector given without a name: the file's stem or the model folder's name."""
    path = Path(model)
    stem = path.stem if kind == "ultralytics" else (path.name or model.rstrip("/").split("/")[-1])
    return normalize_name(stem).replace(" ", "-") or kind


def load_detector(spec: tuple[str, str, str | None], device: str, class_map: ClassMap, conf: float, imgsz: int,
                  max_det: int, batch_size: int, classes: Sequence[str] = (), trust: bool = False) -> Detector:
    """One detector from a parsed ``--detector`` spec (name, model, processor); ``classes``: the ``--classes``
    vocabulary (zero-shot prompts; YOLO-World's classes); ``trust``: load an Ultralytics pickle unrestricted."""
    name, model, processor = spec
    kind = detector_kind(model)
    if kind == "ultralytics":
        return YoloDetector(model, device, class_map, conf, imgsz, max_det, batch_size, name=name,
                            flag=f"--detector {name}", classes=classes, trust=trust)
    if kind == "zero_shot":
        return ZeroShotDetector(model, processor, device, class_map, conf, max_det, batch_size, name,
                                list(classes) or class_map.prompts(name), flag=f"--detector {name}")
    return RTDetrDetector(model, processor, device, class_map, conf, max_det, batch_size, name=name,
                          flag=f"--detector {name}", processor_flag=f"--detector {name}")
