// Package version holds the build version of kvinject's binaries, set at link time:
//
//	go build -ldflags "-X github.com/kvinject/kvinject/internal/version.Version=v0.1.0"
package version

// Version is the release version; "dev" for local builds.
var Version = "dev"
