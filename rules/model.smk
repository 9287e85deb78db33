rule convert_model:
    """Load the configured model once and save it as a safetensors directory, with a table of its
    tracked linear modules (name, block, type, width) for jobs that need no weights."""
    input:
        unpack(model_inputs),
    output:
        model_dir=directory(res("model")),
        modules=res("model_modules.parquet"),
    params:
        source=config["model"]["source"],
        dtype=config["model"]["dtype"],
    threads: 2
    resources:
        mem_mb=4000,
    log:
        res("logs/convert_model.log"),
    benchmark:
        res("benchmarks/convert_model.tsv")
    conda:
        "../envs/model.yaml"
    script:
        "../workflow_scripts/steps/convert_model.py"
