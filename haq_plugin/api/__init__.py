"""The plugin API: hook specifications, the backend and hardware interfaces, layers, bits, options, policies, errors and the plugin manager."""
