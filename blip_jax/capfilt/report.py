"""What a CapFilt run did: counts, match-probability quantiles, and (when the web captions carry
ground-truth noise labels, as the embedded dataset's do) how well the filter separated noisy from
clean web captions.

Decision rows are those `bootstrap.decide` writes (decisions.jsonl)."""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable

import numpy as np

QUANTILES = (0.1, 0.5, 0.9)
SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def load_noise_labels(path: str) -> dict[tuple[str, str], str]:
    """web_noise.json ([{"image", "caption", "noise_type", "key"?, ...}]) -> {(image, caption):
    noise_type} ("clean" for clean captions), and {(key, caption): noise_type} too for entries with
    the sample's key in webdataset shards."""
    with open(path, encoding="utf-8") as f:
        entries = json.load(f)
    out = {}
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not {"image", "caption", "noise_type"} <= set(e):
            raise ValueError(f"{path}: entry {i} needs 'image', 'caption' and 'noise_type', got {e!r:.120}")
        out[(e["image"], e["caption"])] = e["noise_type"]
        if "key" in e:
            out[(e["key"], e["caption"])] = e["noise_type"]
    return out


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    q = np.quantile(np.asarray(values, np.float64), QUANTILES)
    return {f"p{int(p * 100)}": round(float(v), 4) for p, v in zip(QUANTILES, q)}


def summarize(rows: Iterable[dict], skips: dict[str, int] | None = None,
              noise_labels: dict[tuple[str, str], str] | None = None) -> dict:
    """Decision rows (+ skipped-record counts by reason) -> the report dict (report.json)."""
    n = collections.Counter()
    web_p, syn_p = [], []
    web_labelled: list[tuple[float, str | None]] = []  # (p_match, noise type or None) of scored web texts
    by_noise: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in rows:
        if row.get("skipped"):
            n["records_skipped"] += 1
            continue
        n["records"] += 1
        kept = 0
        for t in row["web"]:
            n["web_texts"] += 1
            label = None if noise_labels is None else noise_labels.get((row["image_key"], t["text"]))
            if t["p_match"] is None:
                n["web_unusable"] += 1
            else:
                web_p.append(t["p_match"])
                web_labelled.append((t["p_match"], label))
            n["web_kept"] += t["keep"]
            kept += t["keep"]
            if noise_labels is not None:
                c = by_noise["unlabelled" if label is None else label]
                c["texts"] += 1
                c["kept"] += t["keep"]
        for t in row["synthetic"]:
            n["synthetic_texts"] += 1
            if t["p_match"] is None:
                n["synthetic_unusable"] += 1
            else:
                syn_p.append(t["p_match"])
            n["synthetic_kept"] += t["keep"]
            kept += t["keep"]
        n["images_kept" if kept else "images_without_text"] += 1
    report = {
        "records": n["records"] + n["records_skipped"],
        "records_processed": n["records"],
        "records_skipped": dict(skips or {}),
        "images_kept": n["images_kept"],
        "images_without_text": n["images_without_text"],
        "web": {"texts": n["web_texts"], "kept": n["web_kept"], "unusable": n["web_unusable"],
                "p_match": _quantiles(web_p)},
        "synthetic": {"texts": n["synthetic_texts"], "kept": n["synthetic_kept"],
                      "unusable": n["synthetic_unusable"], "p_match": _quantiles(syn_p)},
        "texts_kept": n["web_kept"] + n["synthetic_kept"],
    }
    if skips is not None and sum(skips.values()) != n["records_skipped"]:
        report["records_skipped_unaccounted"] = n["records_skipped"] - sum(skips.values())
    if web_labelled:
        report["web"]["threshold_sweep"] = _threshold_sweep(web_labelled)
    if noise_labels is not None:
        report["noise"] = _noise_scores(by_noise)
        auc = _auc([p for p, k in web_labelled if k == "clean"],
                   [p for p, k in web_labelled if k not in ("clean", None)])
        if auc is not None:
            report["noise"]["auc_clean_vs_noisy"] = round(auc, 4)
    return report


def _auc(positive: list[float], negative: list[float]) -> float | None:
    """P(a positive scores above a negative), ties counting half (Mann-Whitney U / n1 n0)."""
    if not positive or not negative:
        return None
    scores = np.asarray(positive + negative, np.float64)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based rank of each distinct value's first occurrence
    ranks = first[inverse] + (counts[inverse] + 1) / 2.0  # average 1-based ranks
    n1, n0 = len(positive), len(negative)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _threshold_sweep(web: list[tuple[float, str | None]]) -> dict:
    """Per threshold: the fraction of scored web captions kept and, with labels, of clean ones kept
    and noisy ones removed (what another `filtering.threshold` would have done)."""
    out = {}
    for t in SWEEP:
        row = {"web_kept": round(sum(p > t for p, _ in web) / len(web), 4)}
        clean = [p for p, k in web if k == "clean"]
        noisy = [p for p, k in web if k not in ("clean", None, "unlabelled")]
        if clean:
            row["clean_kept"] = round(sum(p > t for p in clean) / len(clean), 4)
        if noisy:
            row["noisy_removed"] = round(sum(p <= t for p in noisy) / len(noisy), 4)
        out[str(t)] = row
    return out


def _noise_scores(by_noise: dict[str, collections.Counter]) -> dict:
    """Per noise type: texts and the fraction kept; overall: the fraction of clean captions kept,
    of noisy ones removed, and the precision of removal (removed texts that were noisy)."""
    out = {kind: {"texts": c["texts"], "kept": c["kept"], "kept_fraction": round(c["kept"] / c["texts"], 4)}
           for kind, c in sorted(by_noise.items()) if c["texts"]}
    clean = by_noise.get("clean", collections.Counter())
    noisy = collections.Counter()
    for kind, c in by_noise.items():
        if kind not in ("clean", "unlabelled"):
            noisy.update(c)
    removed_noisy = noisy["texts"] - noisy["kept"]
    removed_clean = clean["texts"] - clean["kept"]
    if clean["texts"]:
        out["clean_kept_fraction"] = round(clean["kept"] / clean["texts"], 4)
    if noisy["texts"]:
        out["noisy_removed_fraction"] = round(removed_noisy / noisy["texts"], 4)
    if removed_noisy + removed_clean:
        out["removal_precision"] = round(removed_noisy / (removed_noisy + removed_clean), 4)
    return out


def format_report(report: dict) -> str:
    """The console summary."""
    w, s = report["web"], report["synthetic"]
    lines = [
        f"records {report['records']}: processed {report['records_processed']}, skipped "
        f"{sum(report['records_skipped'].values())} {report['records_skipped'] or ''}".rstrip(),
        f"web texts {w['texts']}: kept {w['kept']} ({w['kept'] / max(1, w['texts']):.1%}), unusable {w['unusable']}, "
        f"p(match) {w['p_match']}",
        f"synthetic texts {s['texts']}: kept {s['kept']} ({s['kept'] / max(1, s['texts']):.1%}), "
        f"p(match) {s['p_match']}",
        f"images with kept texts {report['images_kept']}, without {report['images_without_text']}; "
        f"texts kept {report['texts_kept']}",
    ]
    noise = report.get("noise")
    if noise:
        kinds = {k: v for k, v in noise.items() if isinstance(v, dict)}
        lines.append("web captions by ground-truth noise type (kept / texts): " + ", ".join(
            f"{k} {v['kept']}/{v['texts']} ({v['kept_fraction']:.1%})" for k, v in kinds.items()))
        lines.append("filter vs ground truth: " + ", ".join(
            f"{k} {noise[k]:.1%}" for k in ("clean_kept_fraction", "noisy_removed_fraction", "removal_precision")
            if k in noise) + (f", AUC clean vs noisy {noise['auc_clean_vs_noisy']:.3f}"
                              if "auc_clean_vs_noisy" in noise else ""))
        sweep = report["web"].get("threshold_sweep", {})
        lines.append("other thresholds (clean kept / noisy removed): " + ", ".join(
            f"{t}: {v['clean_kept']:.0%}/{v['noisy_removed']:.0%}" for t, v in sweep.items()
            if "clean_kept" in v and "noisy_removed" in v))
    return "\n".join(lines)
