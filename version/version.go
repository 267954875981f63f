// Package version holds the release version every binary reports.
package version

// Version is overridden at link time with -ldflags "-X .../version.Version=…".
var Version = "0.1.0-dev"
