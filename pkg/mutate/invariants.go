package mutate

import (
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"

	"github.com/kvinject/kvinject/pkg/agentconfig"
	"github.com/kvinject/kvinject/pkg/mapping"
)

// CheckInvariants verifies what every injected pod must satisfy, whatever its input:
// the secrets volume is in memory; every agent is Pod Security "restricted"
// compliant and gets no Kubernetes API token; only agents mount the identity token
// (a path in an app's env grants nothing without the mount) or write to the secrets
// volume;
// and an agent runs before every init container that reads the secrets;
// every agent's arguments parse (agentconfig.ParseArgs: an action on change
// only on a rotating agent, a restart only with the hub), and an http action
// never runs in the node's network namespace.
func CheckInvariants(pod *corev1.Pod) error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	found := false
	for _, v := range pod.Spec.Volumes {
		if v.Name == VolumeName {
			found = true
			if v.EmptyDir == nil || v.EmptyDir.Medium != corev1.StorageMediumMemory {
				fail("volume %q is not an in-memory emptyDir", VolumeName)
			}
		}
	}
	if !found {
		fail("volume %q is missing", VolumeName)
	}
	if pod.Annotations[mapping.AnnotationStatus] != mapping.StatusInjected {
		fail("annotation %s is not %q", mapping.AnnotationStatus, mapping.StatusInjected)
	}

	isAgent := mapping.IsAgentContainer
	agentSeen, agents := false, 0
	check := func(c corev1.Container, init bool) {
		if isAgent(c.Name) {
			agents++
			agentSeen = agentSeen || init
			if err := checkRestricted(c.SecurityContext); err != nil {
				fail("container %q: %v", c.Name, err)
			}
			shadowed := false
			for _, m := range c.VolumeMounts {
				if m.MountPath == APITokenDir {
					shadowed = m.Name == NoAPITokenVolumeName
				}
			}
			if !shadowed {
				fail("container %q: the Kubernetes API token directory %s is not covered by the %q volume", c.Name, APITokenDir, NoAPITokenVolumeName)
			}
			switch cfg, err := agentconfig.ParseArgs(c.Args, nil); {
			case err != nil:
				fail("container %q: its arguments do not parse: %v", c.Name, err)
			case cfg.OnChange.Kind == agentconfig.OnChangeHTTP && pod.Spec.HostNetwork:
				fail("container %q calls 127.0.0.1 on change, which is the node's with hostNetwork", c.Name)
			}
			return
		}
		for _, m := range c.VolumeMounts {
			switch {
			case m.Name == TokenVolumeName:
				fail("container %q mounts the identity token; only the agent may", c.Name)
			case m.Name == HubTokenVolumeName:
				fail("container %q mounts the hub token; only the agent may", c.Name)
			case m.Name == VolumeName && !m.ReadOnly:
				fail("container %q mounts the secrets volume read-write", c.Name)
			case m.Name == VolumeName && init && !agentSeen:
				fail("init container %q reads the secrets before the agent runs", c.Name)
			}
		}
	}
	for _, c := range pod.Spec.InitContainers {
		check(c, true)
	}
	for _, c := range pod.Spec.Containers {
		check(c, false)
	}
	if agents == 0 {
		fail("no agent container")
	}
	return errors.Join(errs...)
}

// checkRestricted checks the container-level rules of Pod Security "restricted".
func checkRestricted(sc *corev1.SecurityContext) error {
	switch {
	case sc == nil:
		return errors.New("no security context")
	case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot:
		return errors.New("runAsNonRoot is not true")
	case sc.RunAsUser != nil && *sc.RunAsUser == 0:
		return errors.New("runs as root")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		return errors.New("allowPrivilegeEscalation is not false")
	case sc.Privileged != nil && *sc.Privileged:
		return errors.New("privileged")
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		return errors.New("root filesystem is writable")
	case sc.Capabilities == nil || len(sc.Capabilities.Add) > 0 || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL":
		return errors.New("capabilities are not exactly drop ALL")
	case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		return errors.New("seccomp profile is not RuntimeDefault")
	}
	return nil
}
