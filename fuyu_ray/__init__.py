"""fuyu_ray: a distributed benchmark runner for the adept/fuyu-8b vision-language model."""

__version__ = "0.1.0"
