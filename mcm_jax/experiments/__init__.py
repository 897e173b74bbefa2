"""The README's experiments on the bundled digits: the main job, the paper's experiments in
miniature, the text-to-image miniature and the 1-D mixture. Nothing in the library imports them."""
