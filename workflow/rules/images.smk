# Study-level outputs of the image studies: Table 1 (every study of kind `table1`) and the
# small-MNIST figures (kind `mnist_small`). `snakemake table1` / `mnist_small` build the studies
# of those names; their options come from tables.table1_options / mnist_small_options.
from fragility.report import tables  # noqa: E402

PAPER_TABLE1 = str(Path(workflow.basedir) / "workflow/resources/paper_table1.csv")
TABLE1_STUDIES = tables.studies_of_kind(config, "table1")
MNIST_SMALL_STUDIES = tables.studies_of_kind(config, "mnist_small")
MNIST_SMALL_FIGURES = [
    "scatter_top_and_percentile",
    "correlation_by_subset",
    "correlation_vs_decay",
    "correlation_across_test_points",
]
for _study in TABLE1_STUDIES:
    STUDY_FIGURES[_study] = [
        f"{RESULTS}/{_study}/{name}" for name in ("table1.csv", "table1_vs_paper.csv")
    ] + [f"{RESULTS}/{_study}/figures/table1_vs_paper.{ext}" for ext in ("png", "pdf")]
for _study in MNIST_SMALL_STUDIES:
    STUDY_FIGURES[_study] = [
        f"{RESULTS}/{_study}/figures/{name}.{ext}"
        for name in MNIST_SMALL_FIGURES
        for ext in ("png", "pdf")
    ]


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
        study="|".join(TABLE1_STUDIES) or "(?!)",
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        options=lambda w: tables.table1_options(config, w.study),
    run:
        tables.write_table1(
            input.correlations,
            input.paper,
            table_out=output.table,
            versus_out=output.versus,
            **params.options,
        )
        file_logger(log[0])("Table 1 written")


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
        study="|".join(TABLE1_STUDIES) or "(?!)",
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        outdir=lambda w, output: str(Path(output[0]).parent),
    run:
        from fragility.report.figures_images import table1_figure

        table1_figure(input[0], params.outdir)
        file_logger(log[0])("Table 1 figure written")


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
        study="|".join(MNIST_SMALL_STUDIES) or "(?!)",
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        options=lambda w: tables.mnist_small_options(config, w.study),
        outdir=lambda w, output: str(Path(output[0]).parent),
    run:
        from fragility.report.figures_images import mnist_small_figures

        mnist_small_figures(
            input.correlations, input.rows, params.outdir, **params.options
        )
        file_logger(log[0])("small-MNIST figures written")


localrules:
    table1_tables,
    plot_table1,
    plot_mnist_small,
