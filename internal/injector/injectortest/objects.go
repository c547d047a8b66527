// Package injectortest holds what the admission handler's tests share with the
// tests that run the webhook on a real API server (test/integration): the
// loader of the cluster objects that the golden cases run against.
package injectortest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// LoadObjects reads the objects of a multi-document YAML file (such as the
// golden cases' cluster.yaml), in file order: v1 Namespaces and
// ServiceAccounts as typed objects, decoded strictly (an unknown or duplicate
// field is an error), and the kinds listed in unstructuredKinds (e.g. the
// SecretProviderClass) as unstructured objects. Documents holding only
// comments are skipped.
//
// Anything else fails the whole load: a document that is not valid YAML or
// not an object, a kind that is neither, an unreadable file. The error names
// the file and the document (counted from 1, as "---" separates them), so that
// a broken file cannot leave a test with fewer objects than the file lists.
func LoadObjects(file string, unstructuredKinds ...schema.GroupVersionKind) ([]client.Object, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading cluster objects: %w", err)
	}
	return ReadObjects(file, b, unstructuredKinds...)
}

// ReadObjects is LoadObjects for data already read; name stands for the file
// in errors.
func ReadObjects(name string, data []byte, unstructuredKinds ...schema.GroupVersionKind) ([]client.Object, error) {
	rd := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []client.Object
	for n := 1; ; n++ {
		doc, err := rd.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", name, n, err)
		}
		obj, err := decode(doc, unstructuredKinds)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", name, n, err)
		}
		if obj != nil {
			objs = append(objs, obj)
		}
	}
}

// decode decodes one document; it returns nil for a document without content.
func decode(doc []byte, unstructuredKinds []schema.GroupVersionKind) (client.Object, error) {
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	if t := bytes.TrimSpace(j); bytes.Equal(t, []byte("null")) {
		return nil, nil
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(j); err != nil {
		return nil, fmt.Errorf("not a Kubernetes object: %w", err)
	}
	gvk := u.GroupVersionKind()
	var obj client.Object
	switch gvk {
	case corev1.SchemeGroupVersion.WithKind("Namespace"):
		obj = &corev1.Namespace{}
	case corev1.SchemeGroupVersion.WithKind("ServiceAccount"):
		obj = &corev1.ServiceAccount{}
	default:
		for _, k := range unstructuredKinds {
			if gvk == k {
				return u, nil
			}
		}
		return nil, fmt.Errorf("unsupported kind %q of apiVersion %q", gvk.Kind, gvk.GroupVersion())
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return nil, fmt.Errorf("%s: %w", gvk.Kind, err)
	}
	return obj, nil
}
