"""Building the cache from videos: the builder and its stages (`builder`), their time and
memory (`metering`, Table 4), and the model backends they run (`backends/`)."""
