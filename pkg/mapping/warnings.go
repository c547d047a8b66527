package mapping

import (
	"fmt"
	"sort"
	"strings"

	"github.com/kvinject/kvinject/internal/textdist"
)

// unknownKeyWarnings returns one warning for each annotation under kvinject.dev/
// that kvinject does not know, naming the closest valid key.
func unknownKeyWarnings(ann map[string]string) []string {
	known := map[string]bool{}
	for _, k := range podKeys {
		known[k] = true
	}
	var unknown []string
	for k := range ann {
		if strings.HasPrefix(k, Prefix) && !known[k] && !hasKnownPrefix(k) {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	warnings := make([]string, 0, len(unknown))
	for _, k := range unknown {
		switch k {
		case AnnotationAllowedVaults, AnnotationAllowedIdentities:
			warnings = append(warnings, fmt.Sprintf("%s is a namespace policy that cluster admins set on the Namespace; on a pod it has no effect", k))
		case LabelInject:
			warnings = append(warnings, fmt.Sprintf("%s must be a label, not an annotation", k))
		default:
			warnings = append(warnings, fmt.Sprintf("unknown annotation %s is ignored; did you mean %s?", k, closestKey(k)))
		}
	}
	return warnings
}

// hasKnownPrefix reports whether k is a known prefix followed by a name.
func hasKnownPrefix(k string) bool {
	for _, p := range podKeyPrefixes {
		// The prefix without a name is refused by Resolve, not warned about.
		if strings.HasPrefix(k, p) || k == strings.TrimSuffix(p, ".") {
			return true
		}
	}
	return false
}

// closestKey returns the known pod annotation key nearest to k by edit distance.
func closestKey(k string) string {
	best, bestDist := "", -1
	for _, cand := range podKeys {
		if cand == AnnotationStatus {
			continue
		}
		if d := textdist.Levenshtein(strings.ToLower(k), cand); bestDist < 0 || d < bestDist {
			best, bestDist = cand, d
		}
	}
	return best
}
