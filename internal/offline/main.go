package offline

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/kvinject/kvinject/internal/injector"
)

// Command is the webhook's subcommand that runs Main.
const Command = "inject"

// Main runs `kvinject-webhook inject` with the arguments after "inject" and
// returns the exit code: 0 when the documents were printed to stdout, 1 when
// a pod template was refused, a document could not be read or an input holds
// no documents (nothing is printed then), 2 for bad usage. Warnings and
// errors go to stderr.
//
// It takes the webhook's injection flags (injector.Options: --agent-image,
// --default-*, policy, resources...), exactly as the server does, with the
// same default agent image (the one stamped into this build, see
// internal/version; a development build has none and needs --agent-image),
// plus:
//
//	-f, --filename                 a file of YAML documents, or - for stdin (repeatable, required)
//	-n, --namespace                namespace of objects that name none (default "default")
//	--namespace-annotation k=v     annotation of every Namespace not in the input (repeatable)
//	--service-account-annotation k=v  annotation of every ServiceAccount not in the input (repeatable)
//	--webhook-namespace ns         the webhook's own namespace, never sent to it (default "kvinject-system")
//	--excluded-namespaces a,b      other namespaces never sent to it (default "kube-system")
//	--remove-csi-volumes           remove the CSI volume of the migrated SecretProviderClass and its mounts
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	cmd, code, ok := parse(args, stderr)
	if !ok {
		return code
	}
	if !cmd.iopts.AgentImageFromFlag {
		// The image ends up in manifests that may be committed: say which one.
		fmt.Fprintf(stderr, "%s: agent image %s (%s; --agent-image overrides)\n", cmdName, cmd.opts.Mutate.AgentImage, cmd.iopts.AgentImageOrigin())
	}
	var inputs []Input
	for _, f := range cmd.files {
		in := Input{Name: f}
		var err error
		if f == "-" {
			in.Name = "<stdin>"
			in.Data, err = io.ReadAll(stdin)
		} else {
			in.Data, err = os.ReadFile(f)
		}
		if err != nil {
			fmt.Fprintf(stderr, "%s: reading %s: %v\n", cmdName, in.Name, err)
			return 1
		}
		inputs = append(inputs, in)
	}
	res, err := Inject(inputs, cmd.opts)
	for _, w := range res.Warnings {
		fmt.Fprintln(stderr, "warning:", w)
	}
	for _, n := range res.Notes {
		fmt.Fprintln(stderr, "note:", n)
	}
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			fmt.Fprintf(stderr, "%s: refused, nothing printed:\n", cmdName)
			for _, p := range e.Problems {
				fmt.Fprintln(stderr, "  "+p)
			}
		} else {
			fmt.Fprintf(stderr, "%s: %v\n", cmdName, err)
		}
		return 1
	}
	if _, err := stdout.Write(res.Output); err != nil {
		fmt.Fprintf(stderr, "%s: writing the output: %v\n", cmdName, err)
		return 1
	}
	return 0
}

// cmdName is the command's name in messages.
const cmdName = "kvinject-webhook " + Command

// command is a parsed command line.
type command struct {
	files []string
	// iopts are the webhook's injection flags, completed; opts.Defaults and
	// opts.Mutate come from them.
	iopts injector.Options
	opts  Options
}

// parse reads the command line. When it returns false, Main exits with code;
// the message, if any, has been written to stderr.
func parse(args []string, stderr io.Writer) (cmd command, code int, ok bool) {
	fs := flag.NewFlagSet(cmdName, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var webhookNamespace, otherExcluded string
	cmd.iopts.BindFlags(fs)
	addFile := func(s string) error {
		if s == "" {
			return errors.New("empty file name (use - for stdin)")
		}
		cmd.files = append(cmd.files, s)
		return nil
	}
	opts := &cmd.opts
	fs.Func("f", "a file of YAML or JSON documents, or - for stdin (repeatable)", addFile)
	fs.Func("filename", "same as -f", addFile)
	fs.StringVar(&opts.Namespace, "n", "default", "namespace of objects that name none")
	fs.StringVar(&opts.Namespace, "namespace", "default", "same as -n")
	fs.Func("namespace-annotation", "key=value: an annotation of every Namespace that the input does not hold, e.g. kvinject.dev/vault=contoso-shop (repeatable; without any, such Namespaces do not exist)",
		annotationFlag(&opts.NamespaceAnnotations))
	fs.Func("service-account-annotation", "key=value: an annotation of every ServiceAccount that the input does not hold, e.g. azure.workload.identity/client-id=<client-id> (repeatable; without any, such ServiceAccounts do not exist)",
		annotationFlag(&opts.ServiceAccountAnnotations))
	fs.StringVar(&webhookNamespace, "webhook-namespace", DefaultWebhookNamespace, "the webhook's own namespace (the server's --namespace, the Helm release namespace): the cluster never sends its pods to the webhook, so they are printed unchanged")
	fs.StringVar(&otherExcluded, "excluded-namespaces", DefaultOtherExcludedNamespaces, "comma-separated namespaces besides --webhook-namespace whose pods the cluster never sends to the webhook (the Helm chart's webhook.excludedNamespaces; empty for none): printed unchanged")
	fs.BoolVar(&opts.RemoveCSIVolumes, "remove-csi-volumes", false, "remove from a template that names a SecretProviderClass (kvinject.dev/secret-provider-class) the Secrets Store CSI volume of that class and its volumeMounts, keeping the containers' mount path through kvinject.dev/mount-path; other classes' volumes remain (without it such a template is refused, as the webhook refuses the pod)")
	fs.Usage = func() {
		image := "[--agent-image=<image>]"
		if cmd.iopts.AgentImageDefault.Image == "" {
			image = "--agent-image=<image>"
		}
		fmt.Fprintf(stderr, "Usage: %s -f <file|-> [-f ...] %s [the webhook's flags] [flags]\n\n"+
			"Prints the documents with every opted-in pod template injected exactly as the webhook would inject it.\n"+
			"Namespaces and ServiceAccounts are read from the input, else from --namespace-annotation and\n"+
			"--service-account-annotation. Pods of --webhook-namespace and --excluded-namespaces, which the\n"+
			"cluster never sends to the webhook, are printed unchanged.\n"+
			"Agent image: %s.\n"+
			"Exit code: 0 printed, 1 refused or no documents (nothing printed), 2 bad usage.\n\nFlags:\n", cmdName, image, cmd.iopts.AgentImageDefault.Describe())
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return cmd, 0, false
		}
		return cmd, 2, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q (files are given with -f)\n", cmdName, fs.Arg(0))
		return cmd, 2, false
	}
	if len(cmd.files) == 0 {
		fmt.Fprintf(stderr, "%s: no input: give -f <file> or -f - for stdin\n", cmdName)
		return cmd, 2, false
	}
	if err := cmd.iopts.Complete(); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", cmdName, err)
		return cmd, 2, false
	}
	opts.Defaults, opts.Mutate = cmd.iopts.Defaults, cmd.iopts.Mutate
	opts.ExcludedNamespaces = ExcludedNamespaces(webhookNamespace, otherExcluded)
	return cmd, 0, true
}

// annotationFlag parses key=value into *m.
func annotationFlag(m *map[string]string) func(string) error {
	return func(s string) error {
		k, v, ok := strings.Cut(s, "=")
		if k = strings.TrimSpace(k); !ok || k == "" {
			return fmt.Errorf("%q is not key=value", s)
		}
		if *m == nil {
			*m = map[string]string{}
		}
		(*m)[k] = v
		return nil
	}
}
