"""Input pipelines (input_pipeline) and the data sets shipped or prepared for them: TFDS builders,
records, caption data with T5 embeddings, synthetic runlocal batches. Importing
`mcm_jax.data.digits` registers the TFDS builder `digits`; this package itself stays free of
TensorFlow so the digits split (digits_split) loads without it."""
