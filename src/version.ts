// The package's version: a module of its own, so that the command line can say it (and that it runs on Linux
// only) without loading the public API, whose native addon refuses to load elsewhere.
export const VERSION = '0.1.0';
