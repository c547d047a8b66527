package mapping

import (
	"fmt"
	"sort"
	"strings"
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
		if strings.HasPrefix(k, Prefix) && !known[k] {
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

// closestKey returns the known pod annotation key nearest to k by edit distance.
func closestKey(k string) string {
	best, bestDist := "", -1
	for _, cand := range podKeys {
		if cand == AnnotationStatus {
			continue
		}
		if d := editDistance(strings.ToLower(k), cand); bestDist < 0 || d < bestDist {
			best, bestDist = cand, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
