# The Iris figures of the paper (Figures 1 and 2), for every study of kind `iris`.


rule plot_iris:
    input:
        correlations=os.path.join(RESULTS, "{study}/correlations.parquet"),
        rows=os.path.join(RESULTS, "{study}/rows.parquet"),
        diagnostics=os.path.join(RESULTS, "{study}/influence_diagnostics.csv"),
        training=os.path.join(RESULTS, "{study}/training.csv"),
    output:
        [
            report(
                f"{RESULTS}/{{study}}/figures/{name}.png",
                caption=f"../report/iris_{name}.rst",
                category="Study {study}",
                subcategory="Figures of the paper",
                labels={"study": "{study}", "figure": name},
            )
            for name in IRIS_FIGURES
        ],
        [f"{RESULTS}/{{study}}/figures/{name}.pdf" for name in IRIS_FIGURES],
    log:
        os.path.join(RESULTS, "logs/{study}/plot_iris.log"),
    wildcard_constraints:
        study=kind_constraint("iris"),
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        figures=lambda w: grid.study_block(config, w.study).get("figures", {}),
        outdir=lambda w, output: os.path.dirname(output[0]),
    run:
        from fragility.report.figures import iris_figures

        logged(
            log,
            "figures written",
            iris_figures,
            input.correlations,
            input.rows,
            input.diagnostics,
            input.training,
            params.outdir,
            params.figures,
        )


localrules:
    plot_iris,
