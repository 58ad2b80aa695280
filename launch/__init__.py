"""Launching `jaxvlm train`: on Cloud TPU pod slices with gcloud (`jaxvlm launch tpu`, see
launch/README.md) and as several processes on this machine (`jaxvlm launch local`), the way
tests and laptops rehearse a pod run."""
