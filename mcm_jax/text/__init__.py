"""Frozen text networks on Keras's JAX backend: the T5 encoder of text-to-image training
(text_encoder) and the Keras set-up it and CLIP share (keras_backend)."""
