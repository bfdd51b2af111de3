from smollm.cli.prepare import main

if __name__ == "__main__":
    raise SystemExit(main())
