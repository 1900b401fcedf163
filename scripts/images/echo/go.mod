module preview-env.local/echo

go 1.24
