"""The two detectors of the ensemble, batched, returning plain detections in pixels.

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
"""
from __future__ import annotations

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
        per = (bool(data) and set(data) <= {*DETECTOR_NAMES, LABELS_SOURCE}
               and all(isinstance(v, dict) for v in data.values()))
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
    name = "yolo"

    def __init__(self, weights: str, device: str, class_map: ClassMap, conf: float, imgsz: int, max_det: int,
                 batch_size: int):
        # ``weights`` passed runtime.require_yolo_weights: a local file, or an official name
        # (yolov8x.pt) that Ultralytics downloads on first use.
        YOLO = import_ultralytics()
        try:
            self.model = YOLO(weights)
            names = self.model.names  # loads the weights: a bad checkpoint fails here, not in the first batch
        except Exception as e:  # Ultralytics raises many kinds for a bad checkpoint
            raise InputError(f"--yolo_model: cannot load {weights}: {str(e).splitlines()[0] if str(e) else e!r}") \
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
    name = "rtdetr"

    def __init__(self, model_path: str, processor_path: str | None, device: str, class_map: ClassMap,
                 conf: float, max_det: int, batch_size: int):
        from transformers import AutoImageProcessor, AutoModelForObjectDetection
        model_dir = Path(model_path)
        if not processor_path and model_dir.is_dir() and not (model_dir / "preprocessor_config.json").is_file():
            raise InputError(f"--detr_model: no image processor (preprocessor_config.json) in {model_path}; "
                             "give --detr_processor")
        try:
            self.model = AutoModelForObjectDetection.from_pretrained(model_path).to(device).eval()
        except (OSError, ValueError) as e:
            raise InputError(f"--detr_model: cannot load {model_path}: {str(e).splitlines()[0]}") from None
        flag = "--detr_processor" if processor_path else "--detr_model"
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
