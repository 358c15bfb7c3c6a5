# Study-level outputs of the image studies: Table 1 (studies of kind `table1`) and the small-MNIST
# figures (kind `mnist_small`); their options come from tables.table1_options / mnist_small_options.
PAPER_TABLE1 = str(Path(workflow.basedir) / "workflow/resources/paper_table1.csv")


rule table1_tables:
    input:
        correlations=f"{RESULTS}/{{study}}/correlations.parquet",
        paper=PAPER_TABLE1,
    output:
        table=f"{RESULTS}/{{study}}/table1.csv",
        versus=f"{RESULTS}/{{study}}/table1_vs_paper.csv",
    log:
        f"{RESULTS}/logs/{{study}}/table1_tables.log",
    wildcard_constraints:
        study=kind_constraint("table1"),
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        options=lambda w: tables.table1_options(config, w.study),
    run:
        logged(
            log,
            "Table 1 written",
            tables.write_table1,
            input.correlations,
            input.paper,
            table_out=output.table,
            versus_out=output.versus,
            **params.options,
        )


rule plot_table1:
    input:
        f"{RESULTS}/{{study}}/table1_vs_paper.csv",
    output:
        report(
            f"{RESULTS}/{{study}}/figures/table1_vs_paper.png",
            caption="../report/table1_vs_paper.rst",
            category="Study {study}",
            subcategory="Figures of the paper",
            labels={"study": "{study}", "figure": "table1_vs_paper"},
        ),
        f"{RESULTS}/{{study}}/figures/table1_vs_paper.pdf",
    log:
        f"{RESULTS}/logs/{{study}}/plot_table1.log",
    wildcard_constraints:
        study=kind_constraint("table1"),
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        outdir=lambda w, output: str(Path(output[0]).parent),
    run:
        from fragility.report.figures_images import table1_figure

        logged(
            log, "Table 1 figure written", table1_figure, input[0], params.outdir
        )


rule plot_mnist_small:
    input:
        correlations=f"{RESULTS}/{{study}}/correlations.parquet",
        rows=f"{RESULTS}/{{study}}/rows.parquet",
    output:
        [
            report(
                f"{RESULTS}/{{study}}/figures/{name}.png",
                caption=f"../report/mnist_small_{name}.rst",
                category="Study {study}",
                subcategory="Figures of the paper",
                labels={"study": "{study}", "figure": name},
            )
            for name in MNIST_SMALL_FIGURES
        ],
        [f"{RESULTS}/{{study}}/figures/{name}.pdf" for name in MNIST_SMALL_FIGURES],
    log:
        f"{RESULTS}/logs/{{study}}/plot_mnist_small.log",
    wildcard_constraints:
        study=kind_constraint("mnist_small"),
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        options=lambda w: tables.mnist_small_options(config, w.study),
        outdir=lambda w, output: str(Path(output[0]).parent),
    run:
        from fragility.report.figures_images import mnist_small_figures

        logged(
            log,
            "small-MNIST figures written",
            mnist_small_figures,
            input.correlations,
            input.rows,
            params.outdir,
            **params.options,
        )


localrules:
    table1_tables,
    plot_table1,
    plot_mnist_small,
