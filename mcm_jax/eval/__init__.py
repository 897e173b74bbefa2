"""The eval job (evaluate): resumable sampling, metrics (FID in fid/, FD-digits with
digits_classifier, CLIP score), reports, and the aDDIM calibration (calibrate)."""
