"""The verdict (study/verdict.py): the noise ceiling recovered on a synthetic cell with known
variances, the word flipping exactly at each threshold, flags named instead of numbers, the seed
spread, the best estimator, and the page (report/page.py) rendered in a headless Chromium."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from fragility.report.page import LINE_COLOURS, index_page, write_index
from fragility.stats import correlate
from fragility.study import noise as noise_mod
from fragility.study import verdict as v

CELL = {"study": "s", "dataset": "d", "arch": "net", "decay": 0.0, "seed": 0}


def synthetic_cell(n=400, signal=1.0, sigma=0.5, shift=(0.3, -2.0), seed=0, estimator_noise=0.0):
    """Δ*_i ~ N(0, signal²); the original re-training measures Δ*_i + c + e_i, the repeat (another
    minibatch order) Δ*_i + c' + e'_i, with e, e' ~ N(0, sigma²) and shifts c, c' shared by every copy.
    The estimator predicts Δ* (+ its own noise). Returns rows, the repeat table and the correlation row."""
    rng = np.random.default_rng(seed)
    true = rng.normal(0, signal, n)
    original = true + shift[0] + rng.normal(0, sigma, n)
    repeated = true + shift[1] + rng.normal(0, sigma, n)
    predicted = true + rng.normal(0, estimator_noise, n) if estimator_noise else true
    loss_at_optimum = 1.0
    rows = pd.DataFrame({**CELL, "test_point": "max", "test_index": 7, "train_index": np.arange(n),
                         "selection": "top", "estimator": "exact", "actual_loss_change": original,
                         "predicted_loss_change": predicted})
    repeat = pd.DataFrame({"removed_index": np.arange(n), "test_index": 7, "test_loss": repeated + loss_at_optimum})
    stats = correlate(predicted, original, resamples=300, seed=1)
    corr = pd.DataFrame([{**CELL, "test_point": "max", "estimator": "exact", "quantity": "loss_change", "subset": "all",
                          "truth": "loo", **stats, "actual_std": float(np.std(original, ddof=1))}])
    return rows, repeat, corr


def test_ceiling_recovered_on_a_synthetic_cell():
    signal, sigma = 1.0, 0.75
    rows, repeat, corr = synthetic_cell(n=4000, signal=signal, sigma=sigma)
    table = v.repeat_noise(rows, [(CELL, repeat)])
    assert table.repeat_n.iloc[0] == 4000
    # σ_repeat recovered although the two runs differ by a shared shift of 2.3
    assert table.sigma_repeat.iloc[0] == pytest.approx(sigma, rel=0.05)
    # noise.py's spread (summary.csv, noise.csv) is the same centred σ: the shared shift cancels
    spread, _ = noise_mod.repeat_spread(rows.set_index("train_index").actual_loss_change,
                                        repeat.set_index("removed_index").test_loss - 1.0)
    assert spread == pytest.approx(float(table.sigma_repeat.iloc[0]), rel=1e-9)
    expected = signal / math.sqrt(signal**2 + sigma**2)  # √(1 − σ²/(s² + σ²)) = corr(Δ*, Δ)
    ceil = v.ceiling(float(table.sigma_repeat.iloc[0]), float(corr.actual_std.iloc[0]))
    assert ceil == pytest.approx(expected, abs=0.02)
    # a perfect estimator correlates with the measured Δ at the ceiling, not above it
    assert corr.pearson.iloc[0] == pytest.approx(expected, abs=0.02)
    verdict = v.verdict_table(corr, rows, table)
    assert verdict.ceiling.iloc[0] == pytest.approx(expected, abs=0.02)
    assert verdict.noise_source.iloc[0].startswith("repeats (4000 points")


@pytest.mark.parametrize("sigma", [1.6, 1.8])
def test_verdict_flips_at_the_ceiling_threshold(sigma):
    rows, repeat, corr = synthetic_cell(n=2000, signal=1.0, sigma=sigma, seed=3)
    table = v.repeat_noise(rows, [(CELL, repeat)])
    ceil = v.ceiling(float(table.sigma_repeat.iloc[0]), float(corr.actual_std.iloc[0]))
    assert 0.45 < ceil < 0.6
    # the threshold just above and just below the measured ceiling
    above = v.verdict_table(corr, rows, table, options={"min_ceiling": ceil + 1e-6}).verdict.iloc[0]
    below = v.verdict_table(corr, rows, table, options={"min_ceiling": ceil - 1e-6}).verdict.iloc[0]
    assert above == v.TOO_NOISY
    assert below == v.PARTLY  # lower bound ≈ 0.47-0.55 ≥ 0.3, < 0.7


def test_noise_not_measured_and_too_few_repeats():
    rows, repeat, corr = synthetic_cell(n=200, sigma=1.0)
    plain = v.verdict_table(corr, rows, None)
    assert plain.verdict.iloc[0] == v.NOT_MEASURED and plain.grade.iloc[0] == v.PARTLY
    assert plain.noise_source.iloc[0] == "not measured"
    two = v.repeat_noise(rows, [(CELL, repeat.iloc[:2])])
    few = v.verdict_table(corr, rows, two)
    assert few.verdict.iloc[0] == v.NOT_MEASURED and "min_repeats 3" in few.noise_source.iloc[0]
    # a deterministic (full-batch) re-training has ceiling 1 without repeats
    fixed = v.verdict_table(corr, rows, None, deterministic={("net", "loo"): True})
    assert fixed.verdict.iloc[0] == v.PARTLY and fixed.ceiling.iloc[0] == 1.0
    # reliable stands without a noise estimate: noise can only lower a correlation
    rows, repeat, corr = synthetic_cell(n=200, sigma=0.05)
    assert v.verdict_table(corr, rows, None).verdict.iloc[0] == v.RELIABLE


def _row(**values):
    base = {**CELL, "test_point": "max", "estimator": "exact", "quantity": "loss_change", "subset": "all", "truth": "loo",
            "n": 40, "flag": "", "pearson": 0.8, "pearson_lo": 0.7, "pearson_hi": 0.9, "spearman": 0.85,
            "spearman_lo": 0.75, "spearman_hi": 0.95, "confidence": 0.95, "actual_std": 1.0}
    return {**base, **values}


@pytest.mark.parametrize("lo, word", [(0.7, v.RELIABLE), (0.6999, v.PARTLY), (0.3, v.PARTLY), (0.2999, v.UNRELIABLE),
                                      (-0.5, v.UNRELIABLE)])
def test_word_flips_at_each_lower_bound_threshold(lo, word):
    frame = pd.DataFrame([_row(pearson_lo=lo)])
    table = v.verdict_table(frame, deterministic={("net", "loo"): True})
    assert table.verdict.iloc[0] == word
    assert table.correlation.iloc[0] == "Pearson" and table.lo.iloc[0] == lo  # the weaker lower bound


def test_weaker_correlation_and_configured_one():
    frame = pd.DataFrame([_row(pearson_lo=0.75, spearman_lo=0.2)])
    det = {("net", "loo"): True}
    assert v.verdict_table(frame, deterministic=det).iloc[0][["correlation", "verdict"]].tolist() == ["Spearman", v.UNRELIABLE]
    chosen = v.verdict_table(frame, deterministic=det, options={"correlation": "pearson"}).iloc[0]
    assert (chosen.correlation, chosen.verdict) == ("Pearson", v.RELIABLE)
    lds = v.verdict_table(pd.DataFrame([_row(truth="lds", pearson=math.nan, pearson_lo=math.nan)]), deterministic={("net", "lds"): True})
    assert lds.correlation.iloc[0] == "LDS" and lds.verdict.iloc[0] == v.RELIABLE


@pytest.mark.parametrize("flag, word", [("model_not_trained:chance_accuracy", v.NOT_TRAINED),
                                        ("model_not_trained:nonfinite;constant_actual", v.NOT_TRAINED),
                                        ("estimator_failed", v.FAILED), ("constant_predicted", v.FAILED),
                                        ("constant_actual", v.NO_SPREAD), ("selection_failed:nothing", v.NO_TRUTH),
                                        ("too_few_points", v.NO_TRUTH)])
def test_flags_are_named_never_numbers(flag, word):
    frame = pd.DataFrame([_row(flag=flag, pearson=math.nan, pearson_lo=math.nan, pearson_hi=math.nan,
                               spearman=math.nan, spearman_lo=math.nan, spearman_hi=math.nan)])
    row = v.verdict_table(frame).iloc[0]
    assert row.verdict == word and math.isnan(row.value) and math.isnan(row.lo)
    assert row.interval == flag and row.flag == flag and row.grade == ""
    # a flagged model keeps its flag even where a number was computed
    if word == v.NOT_TRAINED:
        row = v.verdict_table(pd.DataFrame([_row(flag=flag)])).iloc[0]
        assert row.verdict == v.NOT_TRAINED and math.isnan(row.value) and row.interval == flag


def test_no_interval_when_the_bootstrap_is_off():
    frame = pd.DataFrame([_row(pearson_lo=math.nan, pearson_hi=math.nan, spearman_lo=math.nan, spearman_hi=math.nan)])
    row = v.verdict_table(frame).iloc[0]
    assert row.verdict == v.NO_INTERVAL and row.interval == "0.80 [n/a]"


def test_seed_count_and_spread():
    frame = pd.DataFrame([_row(seed=0, pearson=0.8, pearson_lo=0.72), _row(seed=1, pearson=0.6, pearson_lo=0.4),
                          _row(seed=2, flag="model_not_trained:chance_accuracy")])
    table = v.verdict_table(frame, deterministic={("net", "loo"): True})
    assert (table.seeds_behind_row == 1).all() and (table.study_seeds == 3).all()
    assert table.over_seeds.iloc[0] == "Pearson 0.70 ± 0.14 (n=2); seed2: model did not train"
    assert table.verdicts_over_seeds.iloc[0] == "reliable 1, partly reliable 1, model did not train 1"
    single = v.verdict_table(pd.DataFrame([_row()]), deterministic={("net", "loo"): True})
    assert single.over_seeds.iloc[0] == "one seed" and single.study_seeds.iloc[0] == 1


def test_best_estimator_only_where_intervals_separate():
    det = {("net", "loo"): True}
    separated = pd.DataFrame([_row(estimator="a", pearson_lo=0.8, pearson_hi=0.9, spearman_lo=0.8, spearman_hi=0.9),
                              _row(estimator="b", pearson_lo=0.1, pearson_hi=0.5, spearman_lo=0.2, spearman_hi=0.7),
                              _row(estimator="loo_retraining", pearson_lo=0.95, pearson_hi=1.0, spearman_lo=0.95,
                                   spearman_hi=1.0)])
    best = v.best_estimators(v.verdict_table(separated, deterministic=det))
    study = best[best.seed.astype(str) == "all"].iloc[0]
    assert study.best == "a" and study.line.startswith("a (its interval lies above every other estimator's in 1 of 1")
    overlap = separated.assign(spearman_hi=[0.9, 0.85, 1.0])  # b's Spearman reaches a's lower bound
    best = v.best_estimators(v.verdict_table(overlap, deterministic=det))
    assert (best.line == v.NONE_DISTINGUISHABLE).all()
    one = v.best_estimators(v.verdict_table(separated.iloc[:1], deterministic=det))
    assert (one.line == v.ONE_ESTIMATOR).all()


def test_settings_name_the_key():
    with pytest.raises(ValueError, match="verdict.correlation"):
        v.settings({"correlation": "kendall"})
    with pytest.raises(ValueError, match="partly_reliable"):
        v.settings({"reliable": 0.2, "partly_reliable": 0.5})
    with pytest.raises(ValueError, match="unknown keys"):
        v.settings({"threshold": 0.5})


def test_deterministic_truths():
    full = {"train": {"optimizer": "gd"}, "loo": {"steps": 10}}
    assert v.deterministic_truths(full) == {"loo": True, "groups": True, "lds": True, "pbrf": True}
    mini = {"train": {"batch_size": 50}, "loo": {"steps": 10}, "pbrf": {"solver": "lbfgs"}}
    assert v.deterministic_truths(mini) == {"loo": False, "groups": False, "lds": False, "pbrf": True}


# --------------------------------------------------------------------------- the page
def _study_tables(tmp_path):
    frame = pd.DataFrame([_row(estimator="a"), _row(estimator="b", pearson_lo=0.1, spearman_lo=0.1),
                          _row(arch="other", flag="model_not_trained:chance_accuracy", pearson=math.nan)])
    table = v.verdict_table(frame, deterministic={("net", "loo"): True})
    table.to_csv(tmp_path / "verdict.csv", index=False)
    v.best_estimators(table).to_csv(tmp_path / "verdict_best.csv", index=False)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    for name in ("first", "second"):
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 1], [0, 1])
        fig.savefig(tmp_path / f"{name}.png")
        plt.close(fig)
        figures.append((str(tmp_path / f"{name}.png"), f"figure {name}"))
    out = tmp_path / "report" / "index.html"
    write_index("s", tmp_path / "verdict.csv", tmp_path / "verdict_best.csv", out, figures)
    return out


def test_page_is_self_contained(tmp_path):
    out = _study_tables(tmp_path)
    text = out.read_text()
    assert text.count("data:image/png;base64,") == 3  # 2 figures + the intervals in the evidence
    assert not re.search(r"(src|href)=\"(https?:)?//", text)  # nothing from the network
    # the answer first: the matrix, its legend, the figures, then the evidence collapsed
    order = [text.index(s) for s in ("<table class='matrix'>", "<p class='legend'>", "<h2>Figures</h2>",
                                     "<details id='evidence'>", "<table id='verdict'>", "</details>")]
    assert order == sorted(order) and "<details id='evidence' open" not in text
    # one column per estimator (a, b, exact), one row per cell and test point; a missing pair is a dash
    assert "<th>a</th><th>b</th><th>exact</th>" in text and text.count("<td class='none'>") == 3
    matrix = text[text.index("<table class='matrix'>"):text.index("<p class='legend'>")]
    for word in ("reliable", "unreliable", "did not train"):
        assert f"<b>{word}</b>" in matrix
    # the flag is named, never a number; the numbers say which correlation they are
    assert "<small>model_not_trained:chance_accuracy</small>" in matrix
    assert "<small>P 0.80 [0.70, 0.90]</small>" in matrix and "why: lower bound 0.70 ≥ reliable 0.7" in matrix
    evidence = text[text.index("<table id='verdict'>"):]
    for word in (v.RELIABLE, v.UNRELIABLE, v.NOT_TRAINED):
        assert f">{word}</td>" in evidence


def test_page_matrix_per_truth_and_legend_thresholds():
    frame = pd.DataFrame([_row(estimator="a"), _row(estimator="b", pearson_lo=0.1, spearman_lo=0.1),
                          _row(truth="lds", estimator="a", test_point="mean"),
                          _row(estimator="c", pearson_lo=0.5, spearman_lo=0.5, test_point="median")])
    options = {"reliable": 0.8, "partly_reliable": 0.45}
    table = v.verdict_table(frame, options=options)  # no repeats: short of reliable reads "noise not measured"
    text = index_page("s", table, v.best_estimators(table, options), [], options)
    loo, lds = text.index("<h3>Against leave-one-out"), text.index("<h3>Against re-training on random subsets")
    assert loo < lds < text.index("<p class='legend'>")
    assert text[loo:lds].count("<table class='matrix'>") == 1 and "rowspan='2'" in text[loo:lds]  # max, median
    assert f"<p class='best'>Best estimator: {v.NONE_DISTINGUISHABLE}</p>" in text[loo:lds]
    assert f"<p class='best'>Best estimator: {v.ONE_ESTIMATOR}</p>" in text[lds:]
    legend = text[text.index("<p class='legend'>"):text.index("<h2>Figures</h2>")]
    assert "≥ 0.8," in legend and "≥ 0.45," in legend and "below 0.5 " in legend
    # noise not measured: the cell's left edge says what the interval alone reads
    for grade in (v.PARTLY, v.UNRELIABLE):
        assert re.search(f'<td class="v" style="[^"]*;border-left:5px solid {LINE_COLOURS[grade]}"[^>]*>'
                         "<b>not measured</b>", text)
    assert "(of 1 seed)" in text


def test_page_matrix_says_the_seeds():
    frame = pd.DataFrame([_row(seed=0, pearson=0.8, pearson_lo=0.72), _row(seed=1, pearson=0.6, pearson_lo=0.4)])
    table = v.verdict_table(frame, deterministic={("net", "loo"): True})
    matrix = index_page("s", table, v.best_estimators(table), [])
    matrix = matrix[matrix.index("<table class='matrix'>"):matrix.index("</table>")]
    assert "seed 0 <small>(of 2 seeds)</small>" in matrix and "seed 1 <small>(of 2 seeds)</small>" in matrix
    assert matrix.count("seeds: 1 of 2: Pearson 0.70 ± 0.14 (n=2); reliable 1, partly reliable 1") == 2

def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


PROBE = """<script>
window.addEventListener('load', function () {
  var out = ['screen ' + window.innerHeight];
  var size = function (e) { var b = e.getBoundingClientRect(); return Math.round(b.width) + 'x' + Math.round(b.height); };
  var seen = function (e) { return e.checkVisibility({contentVisibilityAuto: true, visibilityProperty: true}); };
  var matrices = document.querySelectorAll('table.matrix');
  for (var m = 0; m < matrices.length; m++) {
    out.push('matrix ' + matrices[m].rows.length + ' ' + size(matrices[m]) + ' ' + Math.round(matrices[m].getBoundingClientRect().bottom)
             + ' ' + seen(matrices[m]));
  }
  var table = document.getElementById('verdict');
  out.push('table ' + table.rows.length + ' ' + seen(table) + ' ' + document.getElementById('evidence').open);
  var images = document.images;
  for (var i = 0; i < images.length; i++) {
    out.push('img ' + images[i].complete + ' ' + images[i].naturalWidth + ' ' + size(images[i]) + ' ' + seen(images[i])
             + ' ' + (images[i].closest('details') ? 'evidence' : 'figures'));
  }
  var words = document.querySelectorAll('td.v');
  for (var j = 0; j < words.length; j++) { out.push('word ' + getComputedStyle(words[j]).backgroundColor); }
  var pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = out.join('\\n');
  document.body.appendChild(pre);
});
</script>"""


def test_page_renders_in_a_headless_browser(tmp_path):
    browser = _browser()
    if browser is None:
        if os.environ.get("FRAGILITY_REQUIRE_BROWSER") == "1":
            pytest.fail("a browser is required (FRAGILITY_REQUIRE_BROWSER=1) but chromium is not installed "
                        "(apt-get install chromium)")
        pytest.skip("no chromium here (apt-get install chromium; FRAGILITY_REQUIRE_BROWSER=1 makes this a failure)")
    out = _study_tables(tmp_path)
    probed = out.with_name("probed.html")
    probed.write_text(out.read_text().replace("</body>", PROBE + "</body>"))
    run = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                          "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    probe = re.search(r'<pre id="probe">(.*?)</pre>', run.stdout, re.S)
    assert probe, run.stdout[-2000:]
    lines = probe.group(1).splitlines()
    screen = int(lines[0].split()[1])
    # the matrix is visible and ends within the first screen
    matrices = [line.split() for line in lines if line.startswith("matrix")]
    assert len(matrices) == 1 and int(matrices[0][1]) == 3  # header + two cells (net, other)
    width, height = map(int, matrices[0][2].split("x"))
    assert width > 300 and height > 40 and 0 < int(matrices[0][3]) <= screen and matrices[0][4] == "true"
    # the evidence table is in the DOM, collapsed
    table = [line.split() for line in lines if line.startswith("table")][0]
    assert int(table[1]) == 4 and table[2:] == ["false", "false"]  # header + three rows, not shown, not open
    # every figure loaded; the study's figures visible, the intervals folded with the evidence
    images = [line.split() for line in lines if line.startswith("img")]
    assert [image[5] for image in images] == ["figures", "figures", "evidence"]
    for _, complete, natural, size, seen, where in images:
        w, h = map(int, size.split("x"))
        assert complete == "true" and int(natural) > 0 and w > 0 and h > 0 and seen == str(where == "figures").lower()
    colours = [line for line in lines if line.startswith("word")]
    assert len(colours) == 3 and len(set(colours)) == 3  # reliable, unreliable, model did not train
    # and a screenshot that is not blank
    shot = tmp_path / "page.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1400,1200", f"--screenshot={shot}", out.as_uri()],
                   capture_output=True, timeout=120, check=True)
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.std() > 0.05
