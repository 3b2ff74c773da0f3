"""SELMA3D Grand Challenge submission: the container's entry point and the build-context exporter.

* :mod:`.interface` -- per-edition input/output folders and pixel types, environment variables;
* :mod:`.models` -- ``models.json`` and choosing a model from the input file name;
* :mod:`.entrypoint` -- ``python -m nnunetv2_selma.submission``: one image in, one mask out;
* :mod:`.server` -- ``python -m nnunetv2_selma.submission.server``: the 2026 invoke-API HTTP server;
* :mod:`.export` -- ``nnUNetv2_selma_export_submission``: Dockerfile, wheelhouse, resources, test_run.sh.
"""
