# What `snakemake --report report.html` shows: every study's tables (as HTML views of the CSVs),
# the overview figures, per-rule run time and memory, and the configuration used.
from fragility.report import tables  # noqa: E402


report: "../report/workflow.rst"


TABLE1_REPORT_STUDIES = tables.studies_of_kind(config, "table1")
for _study in TABLE1_REPORT_STUDIES:
    STUDY_FIGURES[_study] = STUDY_FIGURES.get(_study, []) + [
        f"{RESULTS}/{_study}/report/table1.html"
    ]


rule table1_report_page:
    input:
        table=os.path.join(RESULTS, "{study}/table1.csv"),
        versus=os.path.join(RESULTS, "{study}/table1_vs_paper.csv"),
    output:
        report(
            os.path.join(RESULTS, "{study}/report/table1.html"),
            caption="../report/table1.rst",
            category="Study {study}",
            subcategory="Tables",
            labels={"study": "{study}", "table": "table1"},
        ),
    log:
        os.path.join(RESULTS, "logs/{study}/table1_report_page.log"),
    wildcard_constraints:
        study="|".join(TABLE1_REPORT_STUDIES) or "(?!)",
    resources:
        mem_mb=1000,
        runtime=5,
    run:
        aggregate.table1_page(input.table, input.versus, output[0])
        file_logger(log[0])("Table 1 page written")


for _study in config["studies"]:
    STUDY_FIGURES[_study] = STUDY_FIGURES.get(_study, []) + report_targets(_study)


rule study_figures:
    input:
        correlations=os.path.join(RESULTS, "{study}/correlations.parquet"),
        rows=os.path.join(RESULTS, "{study}/rows.parquet"),
        estimators=os.path.join(RESULTS, "{study}/estimators.csv"),
    output:
        [
            report(
                os.path.join(RESULTS, f"{{study}}/figures/overview/{name}.png"),
                caption=f"../report/{name}.rst",
                category="Study {study}",
                subcategory="Figures",
                labels={"study": "{study}", "figure": name},
            )
            for name in OVERVIEW_FIGURES
        ],
        [
            os.path.join(RESULTS, f"{{study}}/figures/overview/{name}.pdf")
            for name in OVERVIEW_FIGURES
        ],
    log:
        os.path.join(RESULTS, "logs/{study}/study_figures.log"),
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        figures=lambda w: grid.study_block(config, w.study).get("figures", {}),
        outdir=lambda w, output: str(Path(output[0]).parent),
    run:
        from fragility.report.figures import study_figures

        study_figures(
            input.correlations,
            input.rows,
            input.estimators,
            params.outdir,
            params.figures,
        )
        file_logger(log[0])("overview figures written")


rule study_report_pages:
    input:
        summary=os.path.join(RESULTS, "{study}/summary.csv"),
        by_seed=os.path.join(RESULTS, "{study}/summary_by_seed.csv"),
        noise=os.path.join(RESULTS, "{study}/noise.csv"),
        estimators=os.path.join(RESULTS, "{study}/estimators.csv"),
    output:
        [
            report(
                os.path.join(RESULTS, f"{{study}}/report/{name}.html"),
                caption=f"../report/{name}.rst",
                category="Study {study}",
                subcategory="Tables",
                labels={"study": "{study}", "table": name},
            )
            for name in REPORT_PAGES
        ],
    log:
        os.path.join(RESULTS, "logs/{study}/study_report_pages.log"),
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        study_dir=lambda w, input: str(Path(input.summary).parent),
        outdir=lambda w, output: str(Path(output[0]).parent),
        config_text=lambda w: yaml_dump(config),
    run:
        aggregate.study_report_pages(
            params.study_dir, params.outdir, params.config_text
        )
        file_logger(log[0])("report pages written")


rule gather_benchmarks:
    input:
        # every benchmarked job of the study has run once its correlations exist
        os.path.join(RESULTS, "{study}/correlations.parquet"),
    output:
        jobs=os.path.join(RESULTS, "{study}/benchmarks.csv"),
        by_rule=os.path.join(RESULTS, "{study}/benchmarks_by_rule.csv"),
        page=report(
            os.path.join(RESULTS, "{study}/report/benchmarks.html"),
            caption="../report/benchmarks.rst",
            category="Study {study}",
            subcategory="Run time and memory",
            labels={"study": "{study}", "table": "benchmarks"},
        ),
    log:
        os.path.join(RESULTS, "logs/{study}/gather_benchmarks.log"),
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        benchmarks=os.path.join(RESULTS, "benchmarks/{study}"),
        logs=os.path.join(RESULTS, "logs/{study}"),
    run:
        jobs = aggregate.gather_benchmarks(params.benchmarks, params.logs, *output)
        file_logger(log[0])(f"{len(jobs)} benchmark files gathered")


localrules:
    table1_report_page,
    study_figures,
    study_report_pages,
    gather_benchmarks,
