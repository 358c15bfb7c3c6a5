IRIS_FIGURES = [
    "spearman_vs_depth",
    "spearman_vs_width",
    "param_change_scatter",
    "estimator_spearman_vs_depth",
    "top_eigenvalue_vs_depth",
]
STUDY_FIGURES["iris"] = [
    f"{RESULTS}/iris/figures/{name}.{ext}"
    for name in IRIS_FIGURES
    for ext in ("png", "pdf")
]


rule plot_iris:
    input:
        correlations=os.path.join(RESULTS, "iris/correlations.parquet"),
        rows=os.path.join(RESULTS, "iris/rows.parquet"),
        diagnostics=os.path.join(RESULTS, "iris/influence_diagnostics.csv"),
        training=os.path.join(RESULTS, "iris/training.csv"),
    output:
        [
            report(
                f"{RESULTS}/iris/figures/{name}.png",
                caption=f"../report/iris_{name}.rst",
                category="Study iris",
                subcategory="Figures of the paper",
                labels={"study": "iris", "figure": name},
            )
            for name in IRIS_FIGURES
        ],
        [f"{RESULTS}/iris/figures/{name}.pdf" for name in IRIS_FIGURES],
    log:
        os.path.join(RESULTS, "logs/iris/plot_iris.log"),
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        figures=lambda w: config["studies"]["iris"].get("figures", {}),
        outdir=lambda w, output: os.path.dirname(output[0]),
    run:
        from fragility.report.figures import iris_figures

        iris_figures(
            input.correlations,
            input.rows,
            input.diagnostics,
            input.training,
            params.outdir,
            params.figures,
        )
        file_logger(log[0])("figures written")


localrules:
    plot_iris,
