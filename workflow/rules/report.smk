# What `snakemake --report report.html` shows: every study's tables (as HTML views of the CSVs),
# the overview figures, per-rule run time and memory, and the configuration used.


report: "../report/workflow.rst"


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
        study=kind_constraint("table1"),
    resources:
        mem_mb=1000,
        runtime=5,
    run:
        logged(
            log,
            "Table 1 page written",
            aggregate.table1_page,
            input.table,
            input.versus,
            output[0],
        )


rule overview_figure:
    input:
        correlations=os.path.join(RESULTS, "{study}/correlations.parquet"),
        rows=os.path.join(RESULTS, "{study}/rows.parquet"),
        estimators=os.path.join(RESULTS, "{study}/estimators.csv"),
    output:
        report(
            os.path.join(RESULTS, "{study}/figures/overview/{figure}.png"),
            caption="../report/overview_figure.rst",
            category="Study {study}",
            subcategory="Figures",
            labels={"study": "{study}", "figure": "{figure}"},
        ),
        os.path.join(RESULTS, "{study}/figures/overview/{figure}.pdf"),
    log:
        os.path.join(RESULTS, "logs/{study}/overview_{figure}.log"),
    wildcard_constraints:
        figure="|".join(outputs.OVERVIEW_FIGURES),
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        figures=lambda w: {
            **outputs.sweep_options(config, w.study),
            **grid.study_block(config, w.study).get("figures", {}),
        },
        outdir=lambda w, output: str(Path(output[0]).parent),
    run:
        from fragility.report.figures import study_figures

        logged(
            log,
            f"figure {wildcards.figure} written",
            study_figures,
            input.correlations,
            input.rows,
            input.estimators,
            params.outdir,
            params.figures,
            names=[wildcards.figure],
        )


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
        logged(
            log,
            "report pages written",
            aggregate.study_report_pages,
            params.study_dir,
            params.outdir,
            params.config_text,
        )


rule estimator_study:
    input:
        correlations=verdict_correlations,
        diagnostics=lambda w: [
            path for path, _ in outputs.estimator_diagnostics(config, w.study, RESULTS)
        ],
    output:
        table=os.path.join(RESULTS, "{study}/estimator_cost.csv"),
        figure=report(
            os.path.join(RESULTS, "{study}/figures/estimators/cost_vs_accuracy.png"),
            caption="../report/cost_vs_accuracy.rst",
            category="Study {study}",
            subcategory="Estimator study",
            labels={"study": "{study}", "figure": "cost_vs_accuracy"},
        ),
        pdf=os.path.join(RESULTS, "{study}/figures/estimators/cost_vs_accuracy.pdf"),
        page=report(
            os.path.join(RESULTS, "{study}/report/estimator_study.html"),
            caption="../report/estimator_study.rst",
            category="Study {study}",
            subcategory="Estimator study",
            labels={"study": "{study}", "table": "estimator_study"},
        ),
    log:
        os.path.join(RESULTS, "logs/{study}/estimator_study.log"),
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cells=lambda w: [
            cell for _, cell in outputs.estimator_diagnostics(config, w.study, RESULTS)
        ],
        methods=lambda w: outputs.estimator_methods(config, w.study),
        selection=lambda w: {
            arch: selection.describe(grid.arch_config(config, w.study, arch)["select"])
            for arch in grid.study_block(config, w.study)["architectures"]
        },
        figure_dir=lambda w, output: str(Path(output.figure).parent),
    run:
        from fragility.report.estimator_study import estimator_study

        logged(
            log,
            lambda table: f"{len(table)} estimator-by-truth rows written",
            estimator_study,
            input.correlations,
            list(input.diagnostics),
            params.cells,
            params.methods,
            output.table,
            params.figure_dir,
            output.page,
            params.selection,
        )


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
        logged(
            log,
            lambda jobs: f"{len(jobs)} benchmark files gathered",
            aggregate.gather_benchmarks,
            params.benchmarks,
            params.logs,
            *output,
        )


rule verdict_page:
    input:
        verdict=os.path.join(RESULTS, "{study}/verdict.csv"),
        best=os.path.join(RESULTS, "{study}/verdict_best.csv"),
        figures=lambda w: [
            path for path, _ in outputs.verdict_figures(config, w.study, RESULTS)
        ],
    output:
        report(
            os.path.join(RESULTS, "{study}/report/index.html"),
            caption="../report/verdict.rst",
            category="Study {study}",
            subcategory="Verdict",
            labels={"study": "{study}", "table": "verdict"},
        ),
    log:
        os.path.join(RESULTS, "logs/{study}/verdict_page.log"),
    resources:
        mem_mb=2000,
        runtime=5,
    params:
        captions=lambda w: [
            caption for _, caption in outputs.verdict_figures(config, w.study, RESULTS)
        ],
        options=lambda w: grid.study_block(config, w.study).get("verdict", {}),
        links=lambda w: outputs.verdict_links(config, w.study),
    run:
        logged(
            log,
            "verdict page written",
            verdict_page_job,
            wildcards,
            input,
            output,
            params,
        )


localrules:
    verdict_page,
    table1_report_page,
    overview_figure,
    study_report_pages,
    estimator_study,
    gather_benchmarks,
