"""Engines map :func:`parsit_data.pipeline.process_partition` over partitions.

An engine is a callable ``run(partitions, config, config_hash, control_tokens, out, on_result)``;
it must call ``on_result`` once per partition (order free) and raise on a worker failure.
"""
