"""What a CapFilt run did: counts, match-probability quantiles, and, where there is ground truth,
how right the filter was: with noise labels for the web captions (the embedded dataset's
web_noise.json), how well it separated noisy from clean ones; with the scenes of the images (the
embedded world's scenes.json), which web and synthetic texts were true of their image, and how
many of the kept texts are.

Decision rows are those `bootstrap.decide` writes (decisions.jsonl)."""

from __future__ import annotations

import array
import collections
import json
from collections.abc import Iterable

import numpy as np

from blip_jax.data.synthetic import caption_is_true

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


class ScoreHistogram:
    """Counts of match probabilities at the resolution decision rows store them (1e-6). Quantiles,
    the fraction above a threshold and the AUC come out as from the full list of values, in 8 MB
    however many texts there are (a web-scale run scores hundreds of millions)."""

    BINS = 1_000_001
    _FLUSH = 1 << 16

    def __init__(self):
        self._counts = np.zeros(self.BINS, np.int64)
        self._pending = array.array("q")

    def add(self, p: float) -> None:
        self._pending.append(round(p * 1e6))
        if len(self._pending) >= self._FLUSH:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            bins = np.clip(np.frombuffer(self._pending, np.int64), 0, self.BINS - 1)
            self._counts += np.bincount(bins, minlength=self.BINS)
            self._pending = array.array("q")

    @property
    def counts(self) -> np.ndarray:
        self._flush()
        return self._counts

    def __len__(self) -> int:
        return int(self.counts.sum())

    def quantiles(self) -> dict[str, float]:
        """QUANTILES as np.quantile's default does them (linear between order statistics)."""
        cum = np.cumsum(self.counts)
        n = int(cum[-1])
        if not n:
            return {}
        value = lambda rank: int(np.searchsorted(cum, rank, side="right")) / 1e6  # noqa: E731
        out = {}
        for q in QUANTILES:
            h = (n - 1) * q
            lo = int(np.floor(h))
            a, b = value(lo), value(min(lo + 1, n - 1))
            out[f"p{int(q * 100)}"] = round(a + (h - lo) * (b - a), 4)
        return out

    def fraction_above(self, t: float) -> float:
        c = self.counts
        return float(c[round(t * 1e6) + 1:].sum() / c.sum())

    @staticmethod
    def auc(positive: ScoreHistogram, negative: ScoreHistogram) -> float | None:
        """P(a positive scores above a negative), ties counting half (Mann-Whitney U / n1 n0)."""
        pos, neg = positive.counts, negative.counts
        n1, n0 = int(pos.sum()), int(neg.sum())
        if not n1 or not n0:
            return None
        below = np.cumsum(neg) - neg
        return float((pos * (below + 0.5 * neg)).sum() / (n1 * n0))


class ReportBuilder:
    """`summarize`, one decision row at a time (`add`), so that a merge streams its rows once."""

    def __init__(self, noise_labels: dict[tuple[str, str], str] | None = None, scenes: dict[str, dict] | None = None):
        self.noise_labels = noise_labels
        self.scenes = scenes  # image key -> scene (blip_jax.data.synthetic.load_scenes)
        self.truth: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.n = collections.Counter()
        self.web, self.synthetic = ScoreHistogram(), ScoreHistogram()
        self.web_clean, self.web_noisy = ScoreHistogram(), ScoreHistogram()  # scored web texts by label
        self.by_noise: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def add(self, row: dict) -> None:
        n = self.n
        if row.get("skipped"):
            n["records_skipped"] += 1
            return
        n["records"] += 1
        self._count_truth(row)
        kept = 0
        for t in row["web"]:
            n["web_texts"] += 1
            label = None if self.noise_labels is None else self.noise_labels.get((row["image_key"], t["text"]))
            if t["p_match"] is None:
                n["web_unusable"] += 1
            else:
                self.web.add(t["p_match"])
                if label == "clean":
                    self.web_clean.add(t["p_match"])
                elif label is not None:
                    self.web_noisy.add(t["p_match"])
            n["web_kept"] += t["keep"]
            kept += t["keep"]
            if self.noise_labels is not None:
                c = self.by_noise["unlabelled" if label is None else label]
                c["texts"] += 1
                c["kept"] += t["keep"]
        for t in row["synthetic"]:
            n["synthetic_texts"] += 1
            if t["p_match"] is None:
                n["synthetic_unusable"] += 1
            else:
                self.synthetic.add(t["p_match"])
            n["synthetic_kept"] += t["keep"]
            kept += t["keep"]
        n["images_kept" if kept else "images_without_text"] += 1

    def _count_truth(self, row: dict) -> None:
        """Per source (web / synthetic): texts, those true of the image's scene, kept, kept and true."""
        scene = None if self.scenes is None else self.scenes.get(row["image_key"])
        if scene is None:
            if self.scenes is not None:
                self.truth["no_scene"]["records"] += 1
            return
        for source in ("web", "synthetic"):
            c = self.truth[source]
            for t in row[source]:
                true = caption_is_true(t["text"], scene)
                c["texts"] += 1
                c["true"] += true
                c["kept"] += t["keep"]
                c["kept_true"] += t["keep"] and true

    def result(self, skips: dict[str, int] | None = None) -> dict:
        n = self.n
        report = {
            "records": n["records"] + n["records_skipped"],
            "records_processed": n["records"],
            "records_skipped": dict(skips or {}),
            "images_kept": n["images_kept"],
            "images_without_text": n["images_without_text"],
            "web": {"texts": n["web_texts"], "kept": n["web_kept"], "unusable": n["web_unusable"],
                    "p_match": self.web.quantiles()},
            "synthetic": {"texts": n["synthetic_texts"], "kept": n["synthetic_kept"],
                          "unusable": n["synthetic_unusable"], "p_match": self.synthetic.quantiles()},
            "texts_kept": n["web_kept"] + n["synthetic_kept"],
        }
        if skips is not None and sum(skips.values()) != n["records_skipped"]:
            report["records_skipped_unaccounted"] = n["records_skipped"] - sum(skips.values())
        if len(self.web):
            report["web"]["threshold_sweep"] = self._threshold_sweep()
        if self.noise_labels is not None:
            report["noise"] = _noise_scores(self.by_noise)
            auc = ScoreHistogram.auc(self.web_clean, self.web_noisy)
            if auc is not None:
                report["noise"]["auc_clean_vs_noisy"] = round(auc, 4)
        if self.scenes is not None:
            report["truth"] = _truth_scores(self.truth)
        return report

    def _threshold_sweep(self) -> dict:
        """Per threshold: the fraction of scored web captions kept and, with labels, of clean ones
        kept and noisy ones removed (what another `filtering.threshold` would have done)."""
        out = {}
        for t in SWEEP:
            row = {"web_kept": round(self.web.fraction_above(t), 4)}
            if len(self.web_clean):
                row["clean_kept"] = round(self.web_clean.fraction_above(t), 4)
            if len(self.web_noisy):
                row["noisy_removed"] = round(1.0 - self.web_noisy.fraction_above(t), 4)
            out[str(t)] = row
        return out


def summarize(rows: Iterable[dict], skips: dict[str, int] | None = None,
              noise_labels: dict[tuple[str, str], str] | None = None, scenes: dict[str, dict] | None = None) -> dict:
    """Decision rows (+ skipped-record counts by reason) -> the report dict (report.json)."""
    builder = ReportBuilder(noise_labels, scenes)
    for row in rows:
        builder.add(row)
    return builder.result(skips)


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


def _truth_scores(truth: dict[str, collections.Counter]) -> dict:
    """The counts of `ReportBuilder._count_truth` with the fractions that matter: how many texts of
    each source were true (the data before filtering), how many of the kept ones are (the
    bootstrapped data), and how many true texts the filter let through."""
    out = {}
    for source in ("web", "synthetic"):
        c = truth.get(source, collections.Counter())
        row = {k: c[k] for k in ("texts", "true", "kept", "kept_true")}
        if c["texts"]:
            row["true_fraction"] = round(c["true"] / c["texts"], 4)
        if c["kept"]:
            row["kept_true_fraction"] = round(c["kept_true"] / c["kept"], 4)
        if c["true"]:
            row["true_kept_fraction"] = round(c["kept_true"] / c["true"], 4)
        out[source] = row
    kept = out["web"]["kept"] + out["synthetic"]["kept"]
    if kept:
        out["kept_true_fraction"] = round((out["web"]["kept_true"] + out["synthetic"]["kept_true"]) / kept, 4)
    out["records_without_scene"] = truth.get("no_scene", collections.Counter())["records"]
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
        f"unusable {s.get('unusable', 0)}, p(match) {s['p_match']}",
        f"images with kept texts {report['images_kept']}, without {report['images_without_text']}; "
        f"texts kept {report['texts_kept']} (one bootstrapped entry each)",
    ]
    if report.get("source_skips"):
        lines.append(f"lost while opening the source: {report['source_skips']}")
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
    truth = report.get("truth")
    if truth and "kept_true_fraction" in truth:
        w, s = truth["web"], truth["synthetic"]
        frac = lambda d, k: f"{d[k]:.1%}" if k in d else "-"  # noqa: E731
        lines.append(f"true of their scene: web texts {frac(w, 'true_fraction')}, synthetic "
                     f"{frac(s, 'true_fraction')}; kept texts {truth['kept_true_fraction']:.1%} (web "
                     f"{frac(w, 'kept_true_fraction')}, synthetic {frac(s, 'kept_true_fraction')}); true texts kept: "
                     f"web {frac(w, 'true_kept_fraction')}, synthetic {frac(s, 'true_kept_fraction')}")
    return "\n".join(lines)
