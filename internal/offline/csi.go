package offline

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/kvinject/kvinject/pkg/mapping"
)

// csiRemoval is what inject removes from a pod template with
// --remove-csi-volumes: the CSI volumes of the SecretProviderClass that the
// template migrates (kvinject.dev/secret-provider-class), and their mounts.
type csiRemoval struct {
	// ops remove the volumes and mounts and, when needed, set
	// kvinject.dev/mount-path; their paths are from the pod's root.
	ops []patchOp
	// notes say what was removed.
	notes []string
}

// removeCSIVolumes returns how to remove from pod the CSI volumes of the
// SecretProviderClass class and every volumeMount of them, keeping the
// directory the containers read: when the pod does not set
// kvinject.dev/mount-path, it is set to the mount path of those mounts, which
// must then be one path. The volumes of other classes are never removed (the
// decision warns that they remain). It returns an error, naming the fields and the fix,
// when the removal would change where or what the containers read.
func removeCSIVolumes(pod *corev1.Pod, class string) (csiRemoval, error) {
	var rm csiRemoval
	// Other classes' volumes stay; the decision's warning says so.
	ofClass, _ := mapping.FindCSIVolumes(&pod.Spec, class)
	removed := map[string]bool{}
	for _, v := range ofClass {
		removed[v.Name] = true
	}
	var volIdx []int
	for i, v := range pod.Spec.Volumes {
		if removed[v.Name] {
			volIdx = append(volIdx, i)
		}
	}
	if len(volIdx) == 0 {
		return rm, nil
	}

	// The mounts of the removed volumes, container by container.
	type mount struct{ container, path string }
	var mounts []mount
	paths := map[string]bool{}
	var problems []string
	for _, list := range []struct {
		field      string
		containers []corev1.Container
	}{{"initContainers", pod.Spec.InitContainers}, {"containers", pod.Spec.Containers}} {
		for j, c := range list.containers {
			var idx []int
			for k, m := range c.VolumeMounts {
				if !removed[m.Name] {
					continue
				}
				if m.SubPath != "" || m.SubPathExpr != "" {
					problems = append(problems, fmt.Sprintf("spec.%s[%s].volumeMounts: the CSI volume %q is mounted with a subPath at %s: kvinject writes every file into the one directory kvinject.dev/mount-path; mount the whole volume (or remove the CSI volume and its mounts yourself) and run again",
						list.field, c.Name, m.Name, m.MountPath))
				}
				idx = append(idx, k)
				mounts = append(mounts, mount{c.Name, m.MountPath})
				paths[m.MountPath] = true
			}
			if len(idx) == 0 {
				continue
			}
			base := fmt.Sprintf("/spec/%s/%d/volumeMounts", list.field, j)
			if len(idx) == len(c.VolumeMounts) {
				rm.ops = append(rm.ops, patchOp{Op: "remove", Path: base})
				continue
			}
			for k := len(idx) - 1; k >= 0; k-- {
				rm.ops = append(rm.ops, patchOp{Op: "remove", Path: base + "/" + strconv.Itoa(idx[k])})
			}
		}
	}
	_, hasMountPath := pod.Annotations[mapping.AnnotationMountPath]
	if !hasMountPath && len(paths) > 1 {
		var at []string
		for _, m := range mounts {
			at = append(at, fmt.Sprintf("%s at %s", m.container, m.path))
		}
		problems = append(problems, fmt.Sprintf("spec.volumes: the containers mount the CSI volume of SecretProviderClass %s at different paths (%s), and kvinject writes to one directory: set %s to the directory the containers should read, and point every container at it, then run again",
			class, strings.Join(at, ", "), mapping.AnnotationMountPath))
	}
	if len(problems) > 0 {
		return csiRemoval{}, &Error{Problems: problems}
	}

	if len(volIdx) == len(pod.Spec.Volumes) {
		rm.ops = append(rm.ops, patchOp{Op: "remove", Path: "/spec/volumes"})
	} else {
		for k := len(volIdx) - 1; k >= 0; k-- {
			rm.ops = append(rm.ops, patchOp{Op: "remove", Path: "/spec/volumes/" + strconv.Itoa(volIdx[k])})
		}
	}

	names := make([]string, 0, len(removed))
	for n := range removed {
		names = append(names, strconv.Quote(n))
	}
	sort.Strings(names)
	note := fmt.Sprintf("removed CSI volume %s of SecretProviderClass %s", strings.Join(names, ", "), class)
	if len(mounts) == 0 {
		note += " (no container mounted it)"
	} else {
		var cs []string
		for _, m := range mounts {
			cs = append(cs, m.container)
		}
		note += fmt.Sprintf(" and its volumeMounts in containers %s", strings.Join(cs, ", "))
	}
	// The class's annotation is there, so the template has annotations to add to.
	set := func(key, value string) {
		v, _ := json.Marshal(value)
		rm.ops = append(rm.ops, patchOp{Op: "add", Path: "/metadata/annotations/" + escapePointer(key), Value: v})
	}
	if !hasMountPath && len(paths) == 1 {
		var path string
		for p := range paths {
			path = p
		}
		set(mapping.AnnotationMountPath, path)
		note += fmt.Sprintf("; %s set to %s, where they read the files", mapping.AnnotationMountPath, path)
	} else if mp := pod.Annotations[mapping.AnnotationMountPath]; hasMountPath && len(paths) > 0 {
		if len(paths) == 1 && paths[mp] {
			note += fmt.Sprintf("; the files stay at %s (%s)", mp, mapping.AnnotationMountPath)
		} else {
			note += fmt.Sprintf("; the files are now written to %s (%s), not where the CSI volume was mounted: point the containers at it", mp, mapping.AnnotationMountPath)
		}
	}
	// Exactly the containers that mounted the class keep seeing the files: the
	// default (every regular container) may differ, and once the volume is gone
	// the decision can no longer tell.
	if _, has := pod.Annotations[mapping.AnnotationContainers]; !has && len(mounts) > 0 {
		var names []string
		for _, m := range mounts {
			if !slices.Contains(names, m.container) {
				names = append(names, m.container)
			}
		}
		set(mapping.AnnotationContainers, strings.Join(names, ", "))
		note += fmt.Sprintf("; %s set to %s, the containers that mounted it", mapping.AnnotationContainers, strings.Join(names, ", "))
	}
	rm.notes = append([]string{note}, rm.notes...)
	return rm, nil
}

// escapePointer escapes a key for a JSON pointer.
func escapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}
