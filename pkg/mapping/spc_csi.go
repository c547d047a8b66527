package mapping

import (
	corev1 "k8s.io/api/core/v1"
)

// CSIDriverName is the Secrets Store CSI driver's name in a pod's csi volumes.
const CSIDriverName = "secrets-store.csi.k8s.io"

// csiClassAttribute is the volumeAttributes key that names the SecretProviderClass.
const csiClassAttribute = "secretProviderClass"

// CSIVolume is one Secrets Store CSI volume of a pod spec and the containers that
// mount it.
type CSIVolume struct {
	// Name is the volume's name in spec.volumes.
	Name string
	// Class is its volumeAttributes.secretProviderClass.
	Class string
	// NodePublishSecretRef names the Secret of service-principal credentials the
	// volume passes to the provider; empty without one.
	NodePublishSecretRef string
	// Mounts are the volumeMounts of the volume, init containers first, in the
	// order of the pod spec.
	Mounts []CSIMount
}

// CSIMount is one container's mount of a CSI volume.
type CSIMount struct {
	Container string
	// Init is true for an init container.
	Init      bool
	MountPath string
	// SubPath is the mount's subPath (or subPathExpr): the container sees one
	// file or directory of the volume rather than all of it.
	SubPath string
}

// FindCSIVolumes returns the Secrets Store CSI volumes of spec (driver
// secrets-store.csi.k8s.io) whose volumeAttributes.secretProviderClass is class,
// and, separately, those of every other class, each with the containers that
// mount it. It reads spec only; callers that migrate a pod to class (the webhook
// refuses such a pod, kvinject-webhook inject may remove them) use the first
// list, and leave the second alone.
func FindCSIVolumes(spec *corev1.PodSpec, class string) (ofClass, others []CSIVolume) {
	for _, v := range spec.Volumes {
		if v.CSI == nil || v.CSI.Driver != CSIDriverName {
			continue
		}
		cv := CSIVolume{Name: v.Name, Class: v.CSI.VolumeAttributes[csiClassAttribute]}
		if v.CSI.NodePublishSecretRef != nil {
			cv.NodePublishSecretRef = v.CSI.NodePublishSecretRef.Name
		}
		visit := func(cs []corev1.Container, init bool) {
			for _, c := range cs {
				for _, m := range c.VolumeMounts {
					if m.Name != v.Name {
						continue
					}
					sub := m.SubPath
					if sub == "" {
						sub = m.SubPathExpr
					}
					cv.Mounts = append(cv.Mounts, CSIMount{Container: c.Name, Init: init, MountPath: m.MountPath, SubPath: sub})
				}
			}
		}
		visit(spec.InitContainers, true)
		visit(spec.Containers, false)
		if cv.Class == class {
			ofClass = append(ofClass, cv)
		} else {
			others = append(others, cv)
		}
	}
	return ofClass, others
}
