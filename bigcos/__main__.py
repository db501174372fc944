from bigcos.cli import main

if __name__ == "__main__":  # not when a spawned worker process re-imports a script run as a path
    main()
