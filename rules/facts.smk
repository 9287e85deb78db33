rule download_facts:
    """Download CounterFact (or another facts file) and check its sha256."""
    output:
        raw=res("downloads/counterfact.json"),
    params:
        url=config["facts"]["url"],
        sha256=config["facts"]["sha256"],
    log:
        res("logs/download_facts.log"),
    benchmark:
        res("benchmarks/download_facts.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/download_facts.py"


rule prepare_facts:
    """Validate the configured facts and store them as Parquet (CounterFact schema)."""
    input:
        unpack(facts_inputs),
    output:
        facts=res("facts/facts.parquet"),
    params:
        source=config["facts"]["source"],
        limit=config["facts"]["limit"],
    log:
        res("logs/prepare_facts.log"),
    benchmark:
        res("benchmarks/prepare_facts.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/prepare_facts.py"


rule generate_novel_facts:
    """Invent novel facts in the style of the familiar ones (fictionaliser or LLM)."""
    input:
        unpack(novel_inputs),
        facts=res("facts/facts.parquet"),
    output:
        novel=res("facts/novel.parquet"),
        stats=res("facts/novel_stats.json"),
    params:
        generator=config["novel"]["generator"],
        n=config["novel"]["n"],
        seed=config["novel"]["seed"],
        llm=llm_params(),
    log:
        res("logs/generate_novel_facts.log"),
    benchmark:
        res("benchmarks/generate_novel_facts.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/generate_novel_facts.py"
