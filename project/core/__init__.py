"""The domain, free of Lightning and of files: age groups and bands, demographic labels, the image preprocessing,
calibration (temperature, intervals) and the age-error report."""
