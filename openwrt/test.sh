#!/bin/sh
# OpenWrt package test (run by the packages CI as: test.sh <package> <version>).
# `socketman --version` prints "socketman <semver> (<sha>)"; the version may come with -rN.
case "$1" in
	socketman)
		socketman --version | grep -F "socketman ${2%-r*}"
		;;
esac
