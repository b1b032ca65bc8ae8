"""Weighted Boxes Fusion and NMS of two detectors, checked against hand-computed values."""
import pytest

from vlm_annotation.fusion import fuse, non_maximum_suppression, weighted_boxes_fusion

NAMES = ("yolo", "rtdetr")
W, H = 100, 100


def det(label, box, score):
    return {"label": label, "bbox": list(box), "score": score}


def approx_box(box):
    return pytest.approx(box, abs=1e-9)


def test_two_models_agree_give_one_box_with_both_sources():
    yolo = [det("glass", (10, 10, 50, 50), 0.9)]
    detr = [det("glass", (12, 10, 52, 50), 0.6)]
    out = weighted_boxes_fusion([yolo, detr], NAMES, W, H, iou_thr=0.55)
    assert len(out) == 1
    obj = out[0]
    assert obj["label"] == "glass"
    assert obj["sources"] == ["rtdetr", "yolo"]
    # Score-weighted mean of the two boxes: x1 = (0.9*10 + 0.6*12) / 1.5 = 10.8.
    assert obj["bbox"] == approx_box([10.8, 10.0, 50.8, 50.0])
    # Mean score, rescaled by min(2 models, 2 boxes) / (1 + 1).
    assert obj["score"] == pytest.approx(0.75)


def test_same_box_different_classes_stay_apart():
    yolo = [det("glass", (10, 10, 50, 50), 0.9)]
    detr = [det("bottle", (10, 10, 50, 50), 0.6)]
    out = weighted_boxes_fusion([yolo, detr], NAMES, W, H)
    assert [(o["label"], o["sources"], round(o["score"], 9)) for o in out] == [
        ("glass", ["yolo"], 0.45), ("bottle", ["rtdetr"], 0.3)]


def test_box_of_one_model_only_is_kept_with_rescaled_score():
    yolo = [det("can", (60, 60, 90, 95), 0.8)]
    out = weighted_boxes_fusion([yolo, []], NAMES, W, H)
    assert len(out) == 1
    assert out[0]["sources"] == ["yolo"]
    assert out[0]["bbox"] == approx_box([60, 60, 90, 95])
    assert out[0]["score"] == pytest.approx(0.4)
    # Weights 3:1 -> 0.8 * 3 * min(2, 1) / 4.
    weighted = weighted_boxes_fusion([yolo, []], NAMES, W, H, weights=[3, 1])
    assert weighted[0]["score"] == pytest.approx(0.6)


def test_low_overlap_gives_two_objects_and_boxes_are_clipped():
    yolo = [det("glass", (-10, 0, 30, 40), 0.9)]
    detr = [det("glass", (50, 50, 90, 110), 0.5)]
    out = weighted_boxes_fusion([yolo, detr], NAMES, W, H)
    assert [o["bbox"] for o in out] == [approx_box([0, 0, 30, 40]), approx_box([50, 50, 90, 100])]
    assert [o["score"] for o in out] == [pytest.approx(0.45), pytest.approx(0.25)]


def test_cluster_of_three_boxes_from_two_models():
    yolo = [det("paper", (0, 0, 40, 40), 0.8), det("paper", (0, 0, 40, 42), 0.4)]
    detr = [det("paper", (0, 0, 40, 44), 0.6)]
    out = weighted_boxes_fusion([yolo, detr], NAMES, W, H)
    assert len(out) == 1
    # y2 = (0.8*40 + 0.6*44 + 0.4*42) / 1.8; score = mean 0.6 * min(2, 3) / 2.
    assert out[0]["bbox"] == approx_box([0, 0, 40, (0.8 * 40 + 0.6 * 44 + 0.4 * 42) / 1.8])
    assert out[0]["score"] == pytest.approx(0.6)
    assert out[0]["sources"] == ["rtdetr", "yolo"]


def test_degenerate_and_below_threshold_boxes_are_ignored():
    yolo = [det("glass", (10, 10, 10, 50), 0.9)]
    assert weighted_boxes_fusion([yolo, []], NAMES, W, H) == []


def test_nms_keeps_best_box_and_records_suppressed_sources():
    yolo = [det("glass", (10, 10, 50, 50), 0.6)]
    detr = [det("glass", (12, 10, 52, 50), 0.9), det("glass", (70, 70, 90, 90), 0.5)]
    out = non_maximum_suppression([yolo, detr], NAMES, W, H, iou_thr=0.5)
    assert [(o["bbox"], o["score"], o["sources"]) for o in out] == [
        (approx_box([12, 10, 52, 50]), pytest.approx(0.9), ["rtdetr", "yolo"]),
        (approx_box([70, 70, 90, 90]), pytest.approx(0.5), ["rtdetr"])]
    assert fuse([yolo, detr], NAMES, W, H, method="nms", iou_thr=0.5) == out
