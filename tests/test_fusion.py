"""Weighted Boxes Fusion and NMS of two detectors, checked against hand-computed values."""
import pytest

from vlm_annotation.fusion import fuse, non_maximum_suppression, select_boxes, weighted_boxes_fusion

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


def test_two_classes_on_one_object_become_one_object_with_label_candidates():
    # YOLO says can, RT-DETR says plastic, on one object: per-class fusion keeps both...
    yolo = [det("can", (10, 10, 50, 50), 0.8)]
    detr = [det("plastic", (14, 10, 54, 50), 0.6)]
    assert len(fuse([yolo, detr], NAMES, W, H)) == 2
    # ...the class-agnostic step merges them: the label with the higher fused score (0.4 against 0.3).
    out = fuse([yolo, detr], NAMES, W, H, agnostic_iou=0.4)
    assert len(out) == 1
    obj = out[0]
    assert (obj["label"], obj["sources"]) == ("can", ["rtdetr", "yolo"])
    assert obj["score"] == pytest.approx(0.4)
    assert obj["label_candidates"] == [{"label": "plastic", "score": pytest.approx(0.3)}]
    # The winning label's box (YOLO's can), not a mean with the losing label's.
    assert obj["bbox"] == approx_box([10, 10, 50, 50])


def test_no_merge_below_the_agnostic_iou():
    yolo = [det("can", (10, 10, 50, 50), 0.8)]
    detr = [det("plastic", (30, 10, 70, 50), 0.6)]  # IoU 20*40 / (2*1600 - 800) = 1/3
    out = fuse([yolo, detr], NAMES, W, H, agnostic_iou=0.4)
    assert [(o["label"], "label_candidates" in o) for o in out] == [("can", False), ("plastic", False)]
    merged = fuse([yolo, detr], NAMES, W, H, agnostic_iou=0.3)
    assert [o["label"] for o in merged] == ["can"]


def test_two_objects_of_one_class_are_never_merged_by_the_agnostic_step():
    # Two cans side by side overlap (IoU 0.6) but per-class fusion at 0.7 kept them apart: they stay two.
    yolo = [det("can", (10, 10, 50, 50), 0.9), det("can", (20, 10, 60, 50), 0.8)]
    out = fuse([yolo, []], NAMES, W, H, iou_thr=0.7, agnostic_iou=0.3)
    assert [o["label"] for o in out] == ["can", "can"]


def test_three_detectors_vote_on_the_label():
    # Two detectors say bag (0.5 and 0.4), one says paper (0.99): paper has the higher fused score
    # (0.99 / 3 = 0.33 against (0.5 + 0.4) / 3 = 0.3)...
    dets = [[det("bag", (10, 10, 50, 50), 0.5)], [det("bag", (10, 10, 50, 50), 0.4)],
            [det("paper", (10, 10, 50, 50), 0.99)]]
    names = ("yolo", "rtdetr", "owlv2")
    first = fuse(dets, names, W, H, agnostic_iou=0.5)
    assert [(o["label"], o["sources"]) for o in first] == [("paper", ["owlv2", "rtdetr", "yolo"])]
    assert first[0]["label_candidates"] == [{"label": "bag", "score": pytest.approx(0.3)}]
    # ...and with a stronger second bag the vote goes to bag, paper kept as the runner-up.
    dets[1] = [det("bag", (10, 10, 50, 50), 0.7)]
    out = fuse(dets, names, W, H, agnostic_iou=0.5)
    assert len(out) == 1
    assert out[0]["label"] == "bag" and out[0]["score"] == pytest.approx(1.2 / 3)
    assert out[0]["label_candidates"] == [{"label": "paper", "score": pytest.approx(0.33)}]
    assert out[0]["sources"] == ["owlv2", "rtdetr", "yolo"]
    # Weights per detector: doubling the third makes its paper win (0.99*2 / 4 = 0.495 > 1.2 / 4).
    weighted = fuse(dets, names, W, H, weights=[1, 1, 2], agnostic_iou=0.5)
    assert weighted[0]["label"] == "paper" and weighted[0]["score"] == pytest.approx(0.495)
    assert weighted[0]["label_candidates"] == [{"label": "bag", "score": pytest.approx(0.3)}]


def test_agreement_lowers_the_bar_for_a_box_two_detectors_found():
    # Below conf 0.4: a can both detectors saw (0.3 and 0.35, any classes: plastic from RT-DETR) and a bag only
    # YOLO saw (0.35). Above it: a glass only RT-DETR saw (0.6).
    yolo = [det("can", (10, 10, 50, 50), 0.3), det("bag", (60, 60, 90, 90), 0.35)]
    detr = [det("plastic", (12, 10, 52, 50), 0.35), det("glass", (60, 10, 90, 40), 0.6)]
    assert select_boxes([yolo, detr], 0.4) == [[], [detr[1]]]
    agreed = select_boxes([yolo, detr], 0.4, agree_conf=0.25, agree_iou=0.4)
    assert agreed == [[yolo[0]], detr]
    # An agreeing box must itself pass the agreement bar: at 0.32 YOLO's can (0.3) does not, so RT-DETR's
    # plastic has nobody to agree with.
    assert select_boxes([yolo, detr], 0.4, agree_conf=0.32, agree_iou=0.4) == [[], [detr[1]]]
    # A box of the same detector does not count as agreement.
    assert select_boxes([yolo + [det("can", (11, 10, 51, 50), 0.3)], []], 0.4, agree_conf=0.25) == [[], []]
    # A bar at or above conf changes nothing.
    assert select_boxes([yolo, detr], 0.4, agree_conf=0.4) == select_boxes([yolo, detr], 0.4)
    # Through fuse: the agreed can/plastic become one object (the merge), the glass stays, the bag is dropped.
    out = fuse([yolo, detr], NAMES, W, H, agnostic_iou=0.4, conf=0.4, agree_conf=0.25)
    assert [(o["label"], o["sources"]) for o in out] == [("glass", ["rtdetr"]), ("plastic", ["rtdetr", "yolo"])]
    assert out[1]["label_candidates"] == [{"label": "can", "score": pytest.approx(0.15)}]
